# CPU worker: extraction, metrics aggregation and small jobs (queue cpu).
FROM mcr.microsoft.com/dotnet/sdk:10.0.100-bookworm-slim AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/ReTok.Cli/ReTok.Cli.csproj -c Release -r linux-x64 --self-contained false -o /out

FROM mcr.microsoft.com/dotnet/aspnet:10.0.0-bookworm-slim
WORKDIR /app
COPY --from=build /out .
ENV RETOK_HOME=/data TORCH_CPP_LOG_LEVEL=ERROR
USER 1000:1000
ENTRYPOINT ["dotnet", "retok.dll", "worker", "--queues", "cpu"]

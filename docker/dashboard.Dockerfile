# Dashboard + REST API (+ Hangfire dashboard under /hangfire). Same binary, `retok dashboard`.
FROM mcr.microsoft.com/dotnet/sdk:10.0.100-bookworm-slim AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/ReTok.Cli/ReTok.Cli.csproj -c Release -r linux-x64 --self-contained false -o /out

FROM mcr.microsoft.com/dotnet/aspnet:10.0.0-bookworm-slim
WORKDIR /app
COPY --from=build /out .
ENV RETOK_HOME=/data
USER 1000:1000
EXPOSE 8080
# Binding to 0.0.0.0 is refused unless authentication is configured (RETOK_AUTH_REQUIRED is on by default).
ENTRYPOINT ["dotnet", "retok.dll", "dashboard", "--urls", "http://0.0.0.0:8080"]

# Dashboard + REST API (+ Hangfire dashboard under /hangfire). Same binary, `retok dashboard`.
FROM mcr.microsoft.com/dotnet/sdk:10.0.100-bookworm-slim AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/ReTok.Cli/ReTok.Cli.csproj -c Release -r linux-x64 --self-contained false -o /out

FROM mcr.microsoft.com/dotnet/aspnet:10.0.0-bookworm-slim
WORKDIR /app
COPY --from=build /out .
# RETOK_HOME holds the login (cookie-encryption) keys: owned by the runtime user; compose and k8s mount a volume here
# so logins survive a restart.
RUN install -d -o 1000 -g 1000 /data
ENV RETOK_HOME=/data
USER 1000:1000
EXPOSE 8080
# Binding to 0.0.0.0 is refused until an admin user exists:
#   docker compose run --rm -e RETOK_PASSWORD=... dashboard users add NAME --role admin
ENTRYPOINT ["dotnet", "retok.dll"]
CMD ["dashboard", "--urls", "http://0.0.0.0:8080"]

# CPU worker: extraction, metrics aggregation and small jobs (queue cpu).
FROM mcr.microsoft.com/dotnet/sdk:10.0.100-bookworm-slim AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/ReTok.Cli/ReTok.Cli.csproj -c Release -r linux-x64 --self-contained false -o /out

FROM mcr.microsoft.com/dotnet/aspnet:10.0.0-bookworm-slim
# jemalloc that keeps freed pages: glibc maps every tensor >= 32 MB afresh and the page faults dominate CPU training
# (docs/jobs-train-tokenizer.md, "allocator")
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /out .
# RETOK_HOME (scratch, feature cache; weights mounted at /data/weights) belongs to the runtime user.
RUN install -d -o 1000 -g 1000 /data /data/scratch /data/weights
ENV RETOK_HOME=/data TORCH_CPP_LOG_LEVEL=ERROR \
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
USER 1000:1000
# `retok` is the entrypoint, the command its arguments: the same image runs `db migrate` (compose, k8s Job).
ENTRYPOINT ["dotnet", "retok.dll"]
CMD ["worker", "--queues", "cpu"]

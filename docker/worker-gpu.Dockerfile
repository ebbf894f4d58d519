# GPU worker: TorchSharp with the CUDA libtorch (build arg TorchBackend=cuda).
# Not buildable on the dev machines (no Docker engine, TorchSharp-cuda-linux not on their registry copy).
FROM mcr.microsoft.com/dotnet/sdk:10.0.100-bookworm-slim AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/ReTok.Cli/ReTok.Cli.csproj -c Release -r linux-x64 --self-contained false \
      -p:TorchBackend=cuda -p:TorchSharpGlibcxxPatch=auto -o /out

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends dotnet-runtime-10.0 aspnetcore-runtime-10.0 ca-certificates libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /out .
# RETOK_HOME (scratch, feature cache; weights mounted at /data/weights) belongs to the runtime user.
RUN install -d -o 1000 -g 1000 /data /data/scratch /data/weights
ENV RETOK_HOME=/data TORCH_CPP_LOG_LEVEL=ERROR \
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
USER 1000:1000
ENTRYPOINT ["dotnet", "retok.dll"]
# One worker per node; it leases every GPU it is given (NVIDIA_VISIBLE_DEVICES from the device plugin).
CMD ["worker", "--queues", "gpu,cpu", "--gpus", "all"]

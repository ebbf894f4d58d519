#!/usr/bin/env bash
# The one test command (README, .ci/run): starts the local stack, builds, runs every test.
# usage: ./test.sh [extra dotnet test args, e.g. --filter FullyQualifiedName~Npy]
set -euo pipefail
cd "$(dirname "$0")"
command -v dotnet >/dev/null || { echo "test.sh: the .NET 10 SDK is required (dotnet not on PATH)" >&2; exit 1; }
export RETOK_TEST_DB=$(infra/pg.sh start)
export RETOK_TEST_BLOB=$(infra/azurite.sh start)
if [ "${RETOK_SKIP_BROWSER:-0}" != 1 ] && [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
  echo "test.sh: installing Debian chromium for the dashboard browser tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "test.sh: chromium install failed; browser tests will report it" >&2
fi
export TORCH_CPP_LOG_LEVEL=ERROR
# glibc gives each thread that allocates its own malloc arena; libtorch's intra-op and the tests' worker threads made
# the test host's RSS reach 13-15 GB on a 24 GB machine (the kernel's OOM killer ended two full runs on 2026-12-06,
# with a second suite running beside them). Two arenas: the TrainTokenizer + Tokenizer tests peaked at 8.5 GB, not 11.5.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
dotnet build ReTok.Jobs.sln -nologo -v q -clp:ErrorsOnly
results=$(mktemp -d)
rc=0
dotnet test tests/ReTok.Tests/ReTok.Tests.csproj --no-build -nologo --logger "trx;LogFileName=results.trx" \
  --logger "console;verbosity=minimal" --results-directory "$results" "$@" || rc=$?
trx="$results/results.trx"
if [ -f "$trx" ]; then
  total=$(grep -o '<Counters [^>]*' "$trx" | grep -o 'total="[0-9]*"' | grep -o '[0-9]*')
  passed=$(grep -o '<Counters [^>]*' "$trx" | grep -o 'passed="[0-9]*"' | grep -o '[0-9]*')
  failed=$(grep -o '<Counters [^>]*' "$trx" | grep -o ' failed="[0-9]*"' | grep -o '[0-9]*')
  skipped=$(( total - passed - failed ))
  echo "$passed passed, $failed failed, $skipped skipped"
fi
exit $rc

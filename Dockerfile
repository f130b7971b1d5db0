# The production image: the runtime lock (exact versions, hash-checked; no dev tools and no
# embedded Redis), jobgate installed as a package (not editable), run as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock

# Built by the lock's setuptools (no build isolation: nothing unpinned is downloaded).
# core.store.migrate runs alembic.ini and migrations/ from beside the installed packages
# (its ROOT), so they are put there; `python -I` keeps /tmp/src itself off sys.path.
COPY pyproject.toml README.md alembic.ini /tmp/src/
COPY core /tmp/src/core
COPY api /tmp/src/api
COPY workers /tmp/src/workers
COPY jobgate /tmp/src/jobgate
COPY sim /tmp/src/sim
COPY migrations /tmp/src/migrations
RUN cd /tmp/src \
    && pip install --no-deps --no-build-isolation . \
    && root="$(python -I -c 'from core.store.migrate import ROOT; print(ROOT)')" \
    && cp -r alembic.ini migrations "$root"/ \
    && cd / && rm -rf /tmp/src

# A numeric user, so an orchestrator can check it is not root (runAsNonRoot).
RUN useradd --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin jobgate
USER 10001:10001
WORKDIR /app

EXPOSE 8000
CMD ["jobgate", "api", "--host", "0.0.0.0", "--port", "8000"]

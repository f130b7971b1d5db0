FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY core core
COPY api api
COPY workers workers
COPY jobgate jobgate
COPY sim sim
COPY bench bench
COPY migrations migrations
RUN pip install --no-cache-dir -e .
EXPOSE 8000
CMD ["jobgate", "api", "--host", "0.0.0.0", "--port", "8000"]

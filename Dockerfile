FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY domain domain
COPY projections projections
COPY api api
COPY ledger ledger
COPY scripts scripts
COPY backup backup
COPY reports reports
RUN pip install --no-cache-dir .
ENV KEYLEDGER_DATA_DIR=/data KEYLEDGER_HOST=0.0.0.0 KEYLEDGER_PORT=8000
VOLUME /data
EXPOSE 8000
CMD ["keyledger", "serve"]

#!/bin/bash
# Container health check without curl: GET /health on 127.0.0.1:$KVASIR_HEALTH_PORT must answer 200.
set -eu
port=${KVASIR_HEALTH_PORT:-8000}
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
IFS= read -r -t 3 status <&3
case $status in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) echo "kvasir-healthcheck: ${status:-no answer}" >&2; exit 1 ;;
esac

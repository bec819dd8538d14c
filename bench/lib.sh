# Helpers shared by the bench scripts (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [TENTHS]: until URL answers 2xx, at most TENTHS tenths of a second (default 200).
wait_http() {
  for _ in $(seq 1 "${2:-200}"); do
    if curl -fs -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "$1 never answered" >&2
  return 1
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

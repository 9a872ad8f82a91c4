#!/bin/sh
# kvasir-entrypoint ARGS_FILE PROGRAM [ARG...]: runs PROGRAM with the flags in ARGS_FILE (one per
# line, "--name=value"; blank lines and lines starting with # are skipped), then ARG... The Helm
# chart mounts the ARGS_FILEs from its ConfigMap, so flags change without a new image.
set -eu
if [ "$#" -lt 2 ]; then
  echo "usage: kvasir-entrypoint ARGS_FILE PROGRAM [ARG...]" >&2
  exit 2
fi
file=$1
program=$2
shift 2
if [ ! -r "$file" ]; then
  echo "kvasir-entrypoint: cannot read $file" >&2
  exit 2
fi
# Append the file's flags after the extra arguments, then rotate those to the end, so that the
# extra arguments (per-pod values) come last.
n=$#
while IFS= read -r line || [ -n "$line" ]; do
  case $line in
    '' | '#'*) continue ;;
  esac
  set -- "$@" "$line"
done < "$file"
i=0
while [ "$i" -lt "$n" ]; do
  set -- "$@" "$1"
  shift
  i=$((i + 1))
done
exec "$program" "$@"

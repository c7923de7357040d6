# Sourced first by each bench shell script: with --help (or -h) it prints the script's header
# comment (what it measures, its variables and its command line) and exits.
if [[ ${1-} == --help || ${1-} == -h ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi

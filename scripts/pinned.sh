# Sourced by finn-install.sh and quark-install.sh (after they set PY): the versions of the packages our
# stack pins, and the check that an install without its own pins left them as they were.

# pinned NAME...: "name version" per package ("absent" when not installed).
pinned() {
  "$PY" - "$@" <<'PYEOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "absent")
PYEOF
}

# unchanged WHO BEFORE NAME...: exit 1 with a diff when the pinned versions differ from BEFORE.
unchanged() {
  local who="$1" before="$2" after
  shift 2
  after="$(pinned "$@")"
  if [[ "$before" != "$after" ]]; then
    echo "$who: the install changed pinned packages:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
  fi
}

# need_pkg COMMAND DEBIAN_PACKAGE: installs the package with apt when the command is missing.
# Sourced by ./run.sh and ./test.sh.

apt_updated=0

need_pkg() {
    local command=$1 package=$2
    if command -v "$command" >/dev/null 2>&1; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    if [ "$apt_updated" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq
        apt_updated=1
    fi
    echo "$(basename "$0"): installing $package (for $command)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$package"
}

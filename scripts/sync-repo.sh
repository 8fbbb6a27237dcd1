#!/usr/bin/env bash
# sync-repo: clone a repository from the lab's git server into ~/notebooks, or bring an
# existing clone up to date. See `sync-repo.sh --help`.
set -euo pipefail

prog=$(basename "$0")
git_url=${THINKUBE_GIT_URL:-https://git.thinkube.lab}
notebooks_dir=${THINKUBE_NOTEBOOKS_DIR:-$HOME/notebooks}

usage() {
    cat <<EOF
usage: $prog REPO

Clone REPO from the lab's git server into $notebooks_dir/<name>, or, when it is
already there, pull the latest commits (fast-forward only: local work is never
overwritten).

REPO is OWNER/NAME on the lab's git server (e.g. ml/llm-recipes), or a full git URL
(https://..., ssh://..., git@host:owner/name.git, file://...).

Environment:
  THINKUBE_GIT_URL        the git server's base URL (now: $git_url)
  THINKUBE_NOTEBOOKS_DIR  where repositories go (now: $notebooks_dir)
EOF
}

die() {
    echo "$prog: $*" >&2
    exit 1
}

if [[ $# -eq 1 && ( $1 == -h || $1 == --help ) ]]; then
    usage
    exit 0
fi
if [[ $# -ne 1 || -z $1 ]]; then
    usage >&2
    echo >&2
    echo "$prog: expected exactly one REPO, got $#" >&2
    exit 2
fi
repo=$1
if [[ $repo == -* ]]; then
    usage >&2
    echo >&2
    echo "$prog: REPO must not start with '-': $repo" >&2
    exit 2
fi

case $repo in
    *://* | *@*:*)
        url=$repo
        ;;
    *)
        if [[ ! $repo =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ || $repo == *..* ]]; then
            usage >&2
            echo >&2
            echo "$prog: not a repository name: '$repo' (expected OWNER/NAME)" >&2
            exit 2
        fi
        url="${git_url%/}/${repo%.git}.git"
        ;;
esac

name=${repo%/}
name=${name##*/}
name=${name##*:}
name=${name%.git}
[[ -n $name && $name != . && $name != .. ]] || die "cannot tell the repository's name from '$repo'"
dest="$notebooks_dir/$name"

if [[ -d $dest/.git ]]; then
    origin=$(git -C "$dest" remote get-url origin 2>/dev/null || true)
    if [[ -n $origin && $origin != "$url" ]]; then
        echo "$prog: note: $dest pulls from $origin (not $url)" >&2
    fi
    echo "Updating $dest"
    if ! git -C "$dest" pull --ff-only; then
        die "could not update $dest: commit or stash your changes there (git -C '$dest' status), or pull by hand"
    fi
elif [[ -e $dest ]]; then
    die "$dest exists and is not a git repository: move it away, or set THINKUBE_NOTEBOOKS_DIR"
else
    mkdir -p "$notebooks_dir"
    echo "Cloning $url into $dest"
    git clone -- "$url" "$dest" || die "could not clone $url (is the name right, and may you read it?)"
fi
echo "Up to date: $dest ($(git -C "$dest" log -1 --format='%h %s'))"

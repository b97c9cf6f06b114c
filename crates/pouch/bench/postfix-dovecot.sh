#!/usr/bin/env bash
# Private, throwaway Postfix 3.7 + Dovecot 2.3 instance: the comparison
# baseline for the Pouch mail benchmark.
#
#   postfix-dovecot.sh start SCRATCH_DIR SMTP_PORT IMAP_PORT LMTP_PORT PASSWORD
#   postfix-dovecot.sh stop  SCRATCH_DIR
#
#   SMTP  127.0.0.1:SMTP_PORT  Postfix; no auth needed from 127.0.0.0/8; accepts
#                              mail for u0@bench.test .. u19@bench.test
#   LMTP  127.0.0.1:LMTP_PORT  Dovecot; Postfix delivers every message here
#   IMAP  127.0.0.1:IMAP_PORT  Dovecot; plaintext LOGIN uN@bench.test PASSWORD
#
# Everything (config, queue, Maildirs, logs, pid files, sockets) lives under
# SCRATCH_DIR. /etc/postfix and /etc/dovecot are not used for settings and
# nothing outside SCRATCH_DIR is written. Only 127.0.0.1 is bound.
#
# `start` first stops a leftover instance of the same SCRATCH_DIR (e.g. from a
# killed run), wipes that run's state (only the sub-directories this script
# creates), writes the config, starts both daemons and returns once all
# three ports answer with a protocol greeting. Logs: SCRATCH_DIR/log/.
# `stop` terminates every process of the instance. Both need root: the two
# master daemons start as root and drop privileges per service.
#
# Durability is the packages' default: Postfix fsyncs the queue file before
# it answers 250, Dovecot uses mail_fsync = optimized (fsync on delivery).
#
# Environment (optional):
#   PFDV_DOVECOT_LMTP    Dovecot LMTP server binary (default /usr/lib/dovecot/lmtp)
#   PFDV_USERS           number of users (default 20)
#   PFDV_START_TIMEOUT   seconds to wait for the ports (default 30)
set -euo pipefail

DOMAIN=bench.test
NUSERS=${PFDV_USERS:-20}
START_TIMEOUT=${PFDV_START_TIMEOUT:-30}
MARKER=.pfdv-scratch                # proves a directory is ours to wipe
MAIL_USER=mail                      # existing Debian account that owns the Maildirs

die() { echo "postfix-dovecot.sh: $*" >&2; exit 1; }
usage() {
    die "usage: postfix-dovecot.sh start SCRATCH_DIR SMTP_PORT IMAP_PORT LMTP_PORT PASSWORD | stop SCRATCH_DIR"
}

[ $# -ge 2 ] || usage
CMD=$1
[ "$(id -u)" = 0 ] || die "must run as root"
case $2 in /*) S=$2 ;; *) S=$PWD/$2 ;; esac
S=${S%/}
# Postfix and Dovecot config files cannot quote paths; keep them plain.
[[ $S =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "SCRATCH_DIR must be a plain path: $S"

PF=$S/postfix                       # Postfix: etc/ spool/ (queue) data/
DV=$S/dovecot                       # Dovecot: etc/ run/ (base_dir) state/
MAIL=$S/mail                        # one home (with Maildir/) per user
LOG=$S/log                          # postfix.log, dovecot.log

# --- finding this instance's processes ------------------------------------------
# Every Postfix daemon runs with its cwd in the queue directory, every Dovecot
# process in base_dir, its login chroot or a user's home -- all inside $S.
# So "cwd inside $S and binary from Postfix/Dovecot" identifies exactly this
# instance's processes, needs no pid files (which go stale when a run is
# killed) and cannot hit another instance or the system daemons.
lmtpd_of_instance() {
    sed -n 's/^ *executable = //p' "$DV/etc/dovecot.conf" 2>/dev/null || true
}

instance_pids() {  # instance_pids [masters]: all pids of the instance, or only its two masters
    local lmtpd dir pid exe
    lmtpd=$(lmtpd_of_instance)
    # -lname matches the target of /proc/PID/cwd; zombies have none.
    for dir in $(find /proc -mindepth 2 -maxdepth 2 -name cwd -lname "$S/*" \
                     -printf '%h\n' 2>/dev/null); do
        pid=${dir#/proc/}
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
        if [ "${1:-}" = masters ]; then
            case $exe in /usr/lib/postfix/sbin/master|/usr/sbin/dovecot) echo "$pid" ;; esac
        else
            case $exe in
                /usr/lib/postfix/*|/usr/sbin/dovecot|/usr/lib/dovecot/*) echo "$pid" ;;
                *) [ "$exe" != "$lmtpd" ] || echo "$pid" ;;
            esac
        fi
    done
    return 0
}

wait_gone() {  # wait_gone TENTHS: true once no process of the instance is left
    local i
    for ((i = 0; i < $1; i++)); do
        [ -z "$(instance_pids)" ] && return 0
        sleep 0.1
    done
    [ -z "$(instance_pids)" ]
}

stop_instance() {
    local masters left
    # Graceful first: both masters terminate their children on SIGTERM
    # (what `postfix stop` / `doveadm stop` do, without their fixed sleeps).
    masters=$(instance_pids masters)
    if [ -n "$masters" ]; then
        kill -TERM $masters 2>/dev/null || true
        wait_gone 50 && return 0
    fi
    # Orphans of a killed master, or a master that did not react.
    left=$(instance_pids)
    [ -n "$left" ] || return 0
    kill -KILL $left 2>/dev/null || true
    wait_gone 20 || die "could not stop processes: $(instance_pids | tr '\n' ' ')"
}

# --- readiness probe -------------------------------------------------------------
# greets PORT PREFIX: true once 127.0.0.1:PORT sends a first line starting with
# PREFIX (SMTP/LMTP "220", IMAP "* OK"). A bare connect is not enough: Postfix's
# master holds the listening socket itself and accepts even if no smtpd can run.
greets() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        [[ $line == "$2"* ]]
    ' _ "$1" "$2" 2>/dev/null
}

port_busy() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# --- stop ------------------------------------------------------------------------
case $CMD in
stop)
    [ $# -eq 2 ] || usage
    [ -d "$S" ] || exit 0
    # Never go hunting for processes under a directory that start didn't set up.
    [ -f "$S/$MARKER" ] || die "$S was not set up by this script"
    stop_instance
    exit 0
    ;;
start)
    [ $# -eq 6 ] || usage
    ;;
*) usage ;;
esac

# --- start: arguments and prerequisites ----------------------------------------
SMTP_PORT=$3 IMAP_PORT=$4 LMTP_PORT=$5 PASSWORD=$6
for p in "$SMTP_PORT" "$IMAP_PORT" "$LMTP_PORT"; do
    [[ $p =~ ^[1-9][0-9]{0,4}$ ]] && [ "$p" -le 65535 ] || die "bad port: $p"
done
[ "$SMTP_PORT" != "$IMAP_PORT" ] && [ "$SMTP_PORT" != "$LMTP_PORT" ] \
    && [ "$IMAP_PORT" != "$LMTP_PORT" ] || die "the three ports must differ"
# ':' separates the fields of Dovecot's passwd-file.
[ -n "$PASSWORD" ] && [[ $PASSWORD != *[:$'\n']* ]] \
    || die "PASSWORD must be non-empty and contain no ':' or newline"

# Debian ships Dovecot's LMTP server in the separate dovecot-lmtpd package. If
# that is not installed, an unpacked copy of the same version works too:
#   apt-get download dovecot-lmtpd && dpkg-deb -x dovecot-lmtpd_*.deb DIR
#   PFDV_DOVECOT_LMTP=DIR/usr/lib/dovecot/lmtp postfix-dovecot.sh start ...
LMTPD=${PFDV_DOVECOT_LMTP:-/usr/lib/dovecot/lmtp}
[ -x "$LMTPD" ] || die "no Dovecot LMTP server at $LMTPD: apt-get install dovecot-lmtpd, or set PFDV_DOVECOT_LMTP to an unpacked copy"
[[ $LMTPD =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "PFDV_DOVECOT_LMTP must be a plain absolute path"
for u in postfix dovecot dovenull $MAIL_USER; do
    id "$u" >/dev/null 2>&1 || die "system user $u is missing"
done
MAIL_UID=$(id -u $MAIL_USER) MAIL_GID=$(id -g $MAIL_USER)

# --- start: scratch directory ------------------------------------------------------
mkdir -p "$S"
if [ ! -f "$S/$MARKER" ]; then
    [ -z "$(ls -A "$S")" ] || die "$S is not empty and was not set up by this script"
    touch "$S/$MARKER"
fi
stop_instance                       # leftover of a killed run in this dir
rm -rf "$PF" "$DV" "$MAIL" "$LOG"

for p in "$SMTP_PORT" "$IMAP_PORT" "$LMTP_PORT"; do
    ! port_busy "$p" || die "port $p on 127.0.0.1 is already in use"
done

# The daemons run as postfix/dovecot/dovenull/mail and must traverse the path.
mkdir -p "$PF/etc" "$PF/spool" "$DV/etc" "$MAIL" "$LOG"
chmod 755 "$S" "$PF" "$PF/etc" "$PF/spool" "$DV" "$DV/etc" "$LOG"
chown "$MAIL_UID:$MAIL_GID" "$MAIL"
chmod 700 "$MAIL"
# Postfix's queue sub-directories and data_directory are created with the
# right owners and modes by `postfix start` (post-install create-missing).

# --- start: Postfix config -----------------------------------------------------------
for ((i = 0; i < NUSERS; i++)); do echo "u$i@$DOMAIN OK"; done > "$PF/etc/vmailbox"

cat > "$PF/etc/main.cf" <<EOF
# Generated by postfix-dovecot.sh -- throwaway benchmark instance.
compatibility_level = 3.6
# Every path of this instance inside the scratch dir (config_directory is
# given by "postfix -c").
queue_directory = $PF/spool
data_directory = $PF/data
# Log to a file through postlogd (master.cf "postlog"); no syslog needed.
# The prefix list is a safety check that maillog_file must pass.
maillog_file = $LOG/postfix.log
maillog_file_prefixes = $LOG
syslog_name = postfix-pfdv
myhostname = mx.$DOMAIN
mydomain = $DOMAIN
myorigin = \$myhostname
# No local delivery at all: every accepted address is a virtual mailbox.
mydestination =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
relayhost =
# Loopback and IPv4 only (the smtpd listener in master.cf binds explicitly).
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# Clients on loopback may submit without authentication.
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# u0..u$((NUSERS - 1))@$DOMAIN exist; other recipients are rejected at RCPT.
# texthash: read directly, no postmap step.
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_maps = texthash:$PF/etc/vmailbox
# Hand every message to Dovecot over LMTP.
virtual_transport = lmtp:inet:127.0.0.1:$LMTP_PORT
# Dovecot 2.3's LMTP server does not offer SMTPUTF8; don't advertise it either.
smtputf8_enable = no
# Plain text on loopback; also makes the tlsmgr service unnecessary.
smtpd_tls_security_level = none
smtp_tls_security_level = none
lmtp_tls_security_level = none
readme_directory = no
html_directory = no
EOF

# Unlike Debian's master.cf: no listener on port 25, and no chroot (which would
# need copies of /etc files inside the queue dir). Only services in use.
cat > "$PF/etc/master.cf" <<EOF
# service  type  private unpriv chroot wakeup maxproc command
127.0.0.1:$SMTP_PORT inet n - n - - smtpd
pickup     unix  n       -      n      60     1       pickup
cleanup    unix  n       -      n      -      0       cleanup
qmgr       unix  n       -      n      300    1       qmgr
rewrite    unix  -       -      n      -      -       trivial-rewrite
bounce     unix  -       -      n      -      0       bounce
defer      unix  -       -      n      -      0       bounce
trace      unix  -       -      n      -      0       bounce
verify     unix  -       -      n      -      1       verify
flush      unix  n       -      n      1000?  0       flush
proxymap   unix  -       -      n      -      -       proxymap
proxywrite unix  -       -      n      -      1       proxymap
smtp       unix  -       -      n      -      -       smtp
relay      unix  -       -      n      -      -       smtp
showq      unix  n       -      n      -      -       showq
error      unix  -       -      n      -      -       error
retry      unix  -       -      n      -      -       error
discard    unix  -       -      n      -      -       discard
lmtp       unix  -       -      n      -      -       lmtp
anvil      unix  -       -      n      -      1       anvil
scache     unix  -       -      n      -      1       scache
postlog    unix-dgram n  -      n      -      1       postlogd
EOF

# --- start: Dovecot config -----------------------------------------------------------
# One passwd-file serves as passdb and userdb: user:password:uid:gid::home
for ((i = 0; i < NUSERS; i++)); do
    echo "u$i@$DOMAIN:{PLAIN}$PASSWORD:$MAIL_UID:$MAIL_GID::$MAIL/u$i::"
done > "$DV/etc/users"
chown root:dovecot "$DV/etc/users"   # read by the auth process (user dovecot)
chmod 640 "$DV/etc/users"

cat > "$DV/etc/dovecot.conf" <<EOF
# Generated by postfix-dovecot.sh -- standalone, includes nothing from
# /etc/dovecot.
# Own base_dir (sockets, master.pid) and state_dir: no clash with a system
# Dovecot or a parallel instance. instance_name prefixes process titles.
base_dir = $DV/run
state_dir = $DV/state
instance_name = pfdv-$IMAP_PORT
log_path = $LOG/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
# Plaintext LOGIN over loopback, no TLS.
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# Unprivileged accounts created by dovecot-core.
default_login_user = dovenull
default_internal_user = dovecot
# Mail is owned by the existing "$MAIL_USER" account, whose uid ($MAIL_UID) is
# below the default first_valid_uid (500).
mail_uid = $MAIL_UID
mail_gid = $MAIL_GID
first_valid_uid = $MAIL_UID
first_valid_gid = $MAIL_GID
mail_location = maildir:~/Maildir
# The default, stated explicitly: fsync after delivery/save.
mail_fsync = optimized

passdb {
  driver = passwd-file
  args = $DV/etc/users
}
userdb {
  driver = passwd-file
  args = $DV/etc/users
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  executable = $LMTPD
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}
EOF

# --- start: run ----------------------------------------------------------------------
fail() {
    (stop_instance) >/dev/null 2>&1 || true
    die "$1 (logs: $LOG)"
}
lastlog() { tail -n 1 "$1" 2>/dev/null | tr -d '\r' || true; }

# Dovecot first, so the LMTP target is there when Postfix starts delivering.
dovecot -c "$DV/etc/dovecot.conf" > "$LOG/dovecot-start.out" 2>&1 \
    || fail "dovecot failed to start: $(lastlog "$LOG/dovecot-start.out")"

# `postfix -c DIR` as root needs no alternate_config_directories entry in
# /etc/postfix/main.cf (only the set-gid postdrop/postqueue, run by non-root
# users, require one). Daemons inherit MAIL_CONFIG=DIR from it.
# postfix(1) prints its errors only to a terminal (otherwise only to syslog,
# which may not exist); script(1) provides one so that they can be reported.
if command -v script >/dev/null; then
    script -qec "postfix -c $PF/etc start" /dev/null > "$LOG/postfix-start.out" 2>&1 \
        || fail "postfix failed to start: $(lastlog "$LOG/postfix-start.out")"
else
    postfix -c "$PF/etc" start > "$LOG/postfix-start.out" 2>&1 \
        || fail "postfix failed to start (details only in syslog)"
fi

deadline=$((SECONDS + START_TIMEOUT)) missing=0
until greets "$SMTP_PORT" 220 && greets "$LMTP_PORT" 220 && greets "$IMAP_PORT" '* OK'; do
    # Fail fast if a master died (e.g. a listener could not bind). Dovecot's
    # master may need a moment after `dovecot` returned, hence the tolerance.
    if [ "$(instance_pids masters | wc -l)" -eq 2 ]; then missing=0; else missing=$((missing + 1)); fi
    [ $missing -lt 10 ] \
        || fail "a master process died: $(lastlog "$LOG/dovecot.log") / $(lastlog "$LOG/postfix.log")"
    [ $SECONDS -lt $deadline ] \
        || fail "ports $SMTP_PORT/$LMTP_PORT/$IMAP_PORT not ready after ${START_TIMEOUT}s"
    sleep 0.1
done
exit 0

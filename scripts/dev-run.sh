#!/bin/bash
# Runs apusd in the foreground with a development setup under ./run: loopback only, the dev
# certificate from certs/, and a mailbox user demo@localhost whose fresh random password is
# printed together with a command that sends it mail and one that fetches it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/run
mkdir -p "$RUN"
chmod 700 "$RUN"
CONF=$RUN/apus.conf
cat > "$CONF" <<CONF
# Development config written by scripts/dev-run.sh (make run). Loopback only.
hostname = localhost
local_domains = localhost
postmaster = demo@localhost
spool_directory = $RUN/spool
mail_directory = $RUN/mail
sasldb_path = $RUN/sasldb2
tls_certificate = $ROOT/certs/dev-cert.pem
tls_key = $ROOT/certs/dev-key.pem
listen = smtp 127.0.0.1:2525
listen = submission 127.0.0.1:2587
listen = submissions 127.0.0.1:2465
listen = pop3 127.0.0.1:2110
listen = pop3s 127.0.0.1:2995
CONF

PASSWORD=$(openssl rand -hex 12)
printf '%s' "$PASSWORD" | .build/debug/apusctl -c "$CONF" user add demo@localhost --password-stdin >/dev/null

cat <<MSG

  Apus development server — config $CONF
  SMTP 127.0.0.1:2525 · submission 2587 (STARTTLS) · submissions 2465 (TLS) · POP3 2110 (STLS) · POP3S 2995
  Mailbox user: demo@localhost   password: $PASSWORD

  Send the demo user a message (in a second shell):

    swaks --server 127.0.0.1:2587 --tls --tls-verify --tls-ca-path $ROOT/certs/dev-cert.pem --auth PLAIN --auth-user demo@localhost --auth-password '$PASSWORD' --from demo@localhost --to demo@localhost --header 'Subject: Hello from Apus'

  Fetch it back over POP3S:

    curl -s --cacert $ROOT/certs/dev-cert.pem -u 'demo@localhost:$PASSWORD' pop3s://localhost:2995/1

MSG
exec .build/debug/apusd -c "$CONF"

#!/usr/bin/env bash
# The README's "Running the parts by hand", step by step, on free ports: three pseudonymiser instances and
# an intake on localhost, a donor who previews, donates, checks and withdraws, a steward who approves the
# example query, a researcher who runs it, compaction and the auditor's checks.
#
#   cargo build --workspace --bins
#   BIN=target/debug WORK=$(mktemp -d) bash examples/walkthrough.sh
#
# BIN: the directory holding the binaries (default: the repository's target/debug); WORK: a scratch directory
# (default: a new temporary one). The study, query and sample export are read from the repository.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${BIN:-$REPO/target/debug}" && pwd)
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cd "$REPO"
export PATH="$BIN:$PATH"
export DATADONOR_PASSPHRASE=${DATADONOR_PASSPHRASE:-walkthrough passphrase}

step() { printf '\n==> %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Wait until something accepts connections on 127.0.0.1:$1 (the process $2 must stay alive meanwhile).
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        kill -0 "$2" 2>/dev/null || { echo "process $2 exited before listening on port $1" >&2; return 1; }
        sleep 0.1
    done
    echo "nothing listens on port $1 after 30 s" >&2
    return 1
}

# Four consecutive free ports: three for the pseudonymiser instances (init-local writes their addresses
# into the configuration the study embeds, so they are fixed before the instances start), one for the
# steward's query service.
BASE=$(python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randrange(20000, 60000)
    socks = []
    try:
        for port in range(base, base + 4):
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    break
else:
    raise SystemExit("no four consecutive free ports")
PY
)

P=$WORK/p
I=$WORK/intake
EXPORT=testdata/data/fhir/dab4861f-04d5-4a05-8bfc-7e188353feac.transaction.json
KS=$WORK/ks
# The donor's CPR number, in a file rather than on the command line (where other users and the shell
# history would see it); without --cpr-file the CLI asks for it in a terminal.
CPR=$WORK/cpr
printf '010172-1234\n' >"$CPR"

step "Pseudonymisers: three instances, any two needed, on 127.0.0.1:$BASE..$((BASE + 2))"
run datadonor-pseudonymiser init-local --dir "$P" --instances 3 --threshold 2 --listen "127.0.0.1:$BASE"
for i in 1 2 3; do
    printf '+ %s &\n' "datadonor-pseudonymiser serve --dir $P/instance-$i"
    datadonor-pseudonymiser serve --dir "$P/instance-$i" >"$WORK/pseudonymiser-$i.log" 2>&1 &
    PIDS+=($!)
    wait_port $((BASE + i - 1)) $!
done

step "Intake: create the data directory, serve it on a free port"
run datadonor-intake init --dir "$I" --pseudonymiser-config "$P/pseudonymiser.json" --listen 127.0.0.1:0
printf '+ %s &\n' "datadonor-intake serve --dir $I --listen 127.0.0.1:0"
datadonor-intake serve --dir "$I" --listen 127.0.0.1:0 >"$WORK/intake.log" 2>&1 &
INTAKE_PID=$!
PIDS+=("$INTAKE_PID")
INTAKE=
for _ in $(seq 1 300); do
    INTAKE=$(sed -n 's/.*listening on \(https:\/\/[^ ]*\).*/\1/p' "$WORK/intake.log" | head -n 1)
    [ -n "$INTAKE" ] && break
    kill -0 "$INTAKE_PID" 2>/dev/null || { cat "$WORK/intake.log" >&2; echo "the intake exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$INTAKE" ] || { echo "the intake printed no address after 30 s" >&2; exit 1; }
echo "INTAKE=$INTAKE"

step "Donor: preview what would leave the device"
run datadonor preview --keystore "$KS" --study examples/t2d-study.toml --input "$EXPORT" --cpr-file "$CPR" --postcode 5000

step "Donor: donate"
run datadonor donate --keystore "$KS" --study t2d-dk --intake "$INTAKE" --ca "$I/tls/ca.pem" --ca "$P/ca.pem" \
    --input "$EXPORT" --cpr-file "$CPR" --postcode 5000 --purpose t2d-epidemiology --expires-days 365 --yes

step "Donor: the stored receipts, and one checked against the intake's ledger"
run datadonor receipts --keystore "$KS"
RECEIPT=$(find "$KS/receipts" -name 'donation-*.json' | sort | head -n 1)
[ -n "$RECEIPT" ] || { echo "no stored receipt under $KS/receipts" >&2; exit 1; }
run datadonor verify --keystore "$KS" --ca "$I/tls/ca.pem" "$RECEIPT"

step "Donor: withdraw"
run datadonor withdraw --keystore "$KS" --study t2d-dk --intake "$INTAKE" --ca "$I/tls/ca.pem"

step "Researcher: a signing key, registered with the steward"
run datadonor-research keygen --name researcher@sdu.example --out "$WORK/researcher.key"
echo "researcher@sdu.example $(cat "$WORK/researcher.key.pub")" > "$WORK/researchers"

step "Steward: approve the example query (each run spends epsilon = 5 of the researcher's budget of 6)"
LEDGER=(--ledger "$INTAKE" --auditor-token "@$I/auditor.token" --ca "$I/tls/ca.pem" --state-dir "$WORK/analytics-state")
run datadonor-analytics approve --spec examples/t2d-query.toml --key "$I/steward/steward.key" \
    --researcher researcher@sdu.example --valid-days 30 --max-runs 3 --epsilon 5 --delta 5e-6 \
    --study "$I/studies/t2d-dk.json" --out "$WORK/q.approval"

QS_PORT=$((BASE + 3))
step "Steward: start the query service on 127.0.0.1:$QS_PORT (the only process holding the vault key)"
printf '+ %s &\n' "datadonor-analytics serve --listen 127.0.0.1:$QS_PORT ..."
# The demo's TLS certificate (for localhost and 127.0.0.1) serves the query service too.
datadonor-analytics serve --listen "127.0.0.1:$QS_PORT" --tls-cert "$I/tls/server.pem" --tls-key "$I/tls/server.key" \
    --study "$I/studies/t2d-dk.json" --batches "$I/batches/t2d-dk" --vault-key "$I/vault-private/vault.key" \
    --approvers "$I/steward/steward.key.pub" --researchers "$WORK/researchers" \
    --ledger "$INTAKE" --auditor-token "@$I/auditor.token" --analytics-token "@$I/analytics.token" \
    --ca "$I/tls/ca.pem" --state-dir "$WORK/query-service" 2>"$WORK/query-service.log" &
PIDS+=($!)
wait_port "$QS_PORT" "$!"

step "Researcher: run it through the query service (a differentially private table comes back)"
run datadonor-research query --service "https://127.0.0.1:$QS_PORT" --ca "$I/tls/ca.pem" \
    --key "$WORK/researcher.key" --spec examples/t2d-query.toml --approval "$WORK/q.approval" \
    --out "$WORK/q.csv" --plot "$WORK/q.svg"

step "Steward: compact (erase withdrawn donors' rows, merge small batches)"
run datadonor-analytics compact --batches "$I/batches/t2d-dk" --vault-key "$I/vault-private/vault.key" \
    "${LEDGER[@]}" --analytics-token "@$I/analytics.token"

step "Auditor"
run datadonor-analytics audit log "${LEDGER[@]}"
run datadonor-analytics audit receipt "${LEDGER[@]}" "$RECEIPT"
run datadonor-analytics audit consents --study t2d-dk "${LEDGER[@]}"
run datadonor-analytics audit queries "${LEDGER[@]}"
run datadonor-analytics audit batches --study t2d-dk --batches "$I/batches/t2d-dk" \
    --vault-key "$I/vault-private/vault.key" "${LEDGER[@]}" --html "$WORK/report.html"

step "Done"

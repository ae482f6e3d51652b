#!/usr/bin/env bash
# Checks ops/alerts.yml (run by .ci/run). With promtool on PATH: `promtool check rules`.
# Without it (the usual case here): the file parses as YAML with a Prometheus rule file's
# shape (groups of rules with alert, expr, for, labels.severity, annotations.summary and
# .runbook), unique alert names, balanced brackets and quotes in each expr, only keel's
# metric names (and `up`, `probe_success`), and each runbook annotation names a heading that
# exists in RUNBOOK.md. Also that every SLO the runbook's "Detect" table promises has a rule.
# Python: the deploy-tools venv of scripts/check-deploy.sh (PyYAML), else python3 with PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=ops/alerts.yml
venv="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}/deploy-tools-venv"
started=$SECONDS

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -f "$rules" ] || die "$rules is missing"
if command -v promtool >/dev/null; then
  promtool check rules "$rules" || die "promtool check rules $rules failed"
  printf 'PASS  promtool check rules %s\n' "$rules"
fi

python=""
for candidate in "$venv/bin/python" python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import yaml' 2>/dev/null; then
    python=$candidate
    break
  fi
done
[ -n "$python" ] || die "no python with PyYAML: run scripts/check-deploy.sh once (it makes $venv)"

"$python" - "$rules" RUNBOOK.md <<'PY'
import re, sys
import yaml

rules_path, runbook_path = sys.argv[1], sys.argv[2]
problems = []

def problem(where, what):
    problems.append(f"{rules_path}: {where}: {what}")

# GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
def slug(heading):
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")

anchors = set()
for line in open(runbook_path, encoding="utf-8"):
    m = re.match(r"#{1,6}\s+(.*)", line)
    if m:
        anchors.add(slug(m.group(1)))

known_metrics = {
    "keel_http_requests_total", "keel_http_request_duration_seconds_bucket",
    "keel_jobs_total", "keel_jobs_queued", "keel_webhook_events_total",
    "keel_stripe_circuit_open", "keel_stripe_reconcile_repairs_total",
    "up", "probe_success",
}
promql_words = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "deriv",
    "histogram_quantile", "and", "or", "unless", "offset", "absent", "on", "ignoring",
    "bool", "le", "job", "instance", "kind", "outcome", "status", "method", "route", "type",
}
duration = re.compile(r"^\d+[smhdw]$")

def balanced(expr):
    # Strings first (their contents are not brackets), then (), [], {}.
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if '"' in stripped.replace('""', ""):
        return "an unterminated string"
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in stripped:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return f"an unmatched '{ch}'"
    return f"an unclosed '{stack[-1]}'" if stack else None

try:
    doc = yaml.safe_load(open(rules_path, encoding="utf-8"))
except yaml.YAMLError as error:
    print(f"{rules_path}: not YAML: {error}")
    sys.exit(1)

names = []
exprs = []
if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list) or not doc["groups"]:
    problem("top", "must be a mapping with only a non-empty `groups` list")
else:
    group_names = []
    for gi, group in enumerate(doc["groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            problem(f"groups[{gi}]", "needs a `name`")
            continue
        group_names.append(group["name"])
        extra = set(group) - {"name", "interval", "rules", "limit"}
        if extra:
            problem(group["name"], f"unknown keys {sorted(extra)}")
        if not isinstance(group.get("rules"), list) or not group["rules"]:
            problem(group["name"], "needs a non-empty `rules` list")
            continue
        for ri, rule in enumerate(group["rules"]):
            where = f"{group['name']}.rules[{ri}]"
            if not isinstance(rule, dict):
                problem(where, "not a mapping")
                continue
            extra = set(rule) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if extra:
                problem(where, f"unknown keys {sorted(extra)}")
            name = rule.get("alert")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                problem(where, "`alert` must be a metric-style name")
                continue
            where = name
            names.append(name)
            expr = rule.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problem(where, "needs an `expr`")
                continue
            exprs.append(expr)
            bad = balanced(expr)
            if bad:
                problem(where, f"expr has {bad}")
            # Identifiers outside strings, label matchers and range brackets.
            bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
            bare = re.sub(r"\[[^\]]*\]", "", bare)
            for ident in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
                if ident in known_metrics or ident in promql_words or duration.match(ident):
                    continue
                if re.fullmatch(r"\d*[smhdw]", ident):
                    continue
                problem(where, f"expr uses an unknown name `{ident}`")
            for_ = rule.get("for")
            if not isinstance(for_, str) or not duration.match(for_):
                problem(where, "needs `for:` as a duration (e.g. 5m)")
            labels = rule.get("labels") or {}
            if labels.get("severity") not in {"page", "ticket"}:
                problem(where, "labels.severity must be page or ticket")
            annotations = rule.get("annotations") or {}
            if not annotations.get("summary"):
                problem(where, "needs annotations.summary")
            runbook = annotations.get("runbook", "")
            m = re.fullmatch(r"RUNBOOK\.md#([a-z0-9_-]+)", str(runbook))
            if not m:
                problem(where, "annotations.runbook must be RUNBOOK.md#<section>")
            elif m.group(1) not in anchors:
                problem(where, f"RUNBOOK.md has no section #{m.group(1)}")
            for key, value in list(labels.items()) + list(annotations.items()):
                if not isinstance(value, str):
                    problem(where, f"{key} must be a string")
                elif value.count("{{") != value.count("}}"):
                    problem(where, f"{key} has unbalanced {{{{ }}}}")
    if len(set(group_names)) != len(group_names):
        problem("groups", "group names must be unique")
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        problem("rules", f"duplicate alert names {sorted(dupes)}")

# The SLOs of RUNBOOK.md's "Detect" table, each covered by some rule.
everything = "\n".join(exprs)
wanted = {
    "5xx error rate > 5 %": r'status=~"5\.\."[\s\S]*> 0\.05',
    "p95 latency > 500 ms": r"histogram_quantile\(0\.95[\s\S]*keel_http_request_duration_seconds_bucket[\s\S]*> 0\.5",
    "webhook bad_signature/unavailable": r"keel_webhook_events_total\{[^}]*bad_signature[^}]*unavailable",
    "stripe.process_event failed/dead": r'keel_jobs_total\{kind="stripe\.process_event",outcome=~"failed\|dead"\}',
    "any dead job": r'keel_jobs_total\{outcome="dead"\}',
    "queue growing": r"deriv\([\s\S]*keel_jobs_queued",
    "scrape down": r'up\{job="keel"\} == 0',
}
for what, pattern in wanted.items():
    if not re.search(pattern, everything):
        problem("coverage", f"no rule for: {what}")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"PASS  {rules_path}: {len(names)} alerts, well formed, runbook sections exist")
PY
printf 'alerts checked (%d s)\n' "$((SECONDS - started))"

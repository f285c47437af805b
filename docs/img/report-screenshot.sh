#!/bin/sh
# Re-make docs/img/report.png, the picture of a report in the README: the report of a `make demo`
# study, opened in headless Chromium (the browser tests/test_report.py opens reports in).
#
#   sh docs/img/report-screenshot.sh results/demo-20261207-035412
#
# The report is written outside the study (under /tmp); the study is only read.
set -e
study=${1:?usage: sh docs/img/report-screenshot.sh STUDY_DIR}
out=$(mktemp -d)/report
python -m analysis report "$study" --out "$out"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,2600 \
    --screenshot="$(dirname "$0")/report.png" "file://$out/report.html"

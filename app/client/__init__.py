"""The `vocalborn` command-line client of the analysis API (`vocalborn analyze`, `status`,
`result`, `cancel`): HTTP calls, following live progress, and terminal output."""

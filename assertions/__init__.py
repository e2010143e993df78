"""Pure judgement: the span model, expected trees, matchers and verdicts. No I/O, no imports of daemon/."""

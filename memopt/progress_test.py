import io

from memopt.progress import ProgressReporter, describe, format_line, parse_line, percent


def test_a_progress_line_reads_back_and_nothing_else_does():
    line = format_line({"step": 20, "steps": 100, "train_loss": 5.4321234, "tokens_per_s": 2210.4, "eta_s": 3725.0})
    assert line == "progress step=20 steps=100 train_loss=5.43212 tokens_per_s=2210.4 eta_s=3725"
    values = parse_line(line + "\n")
    assert values == {"step": 20, "steps": 100, "train_loss": 5.43212, "tokens_per_s": 2210.4, "eta_s": 3725}
    assert percent(values) == 20
    assert describe("adamw", values) == "adamw: step 20/100 (20%), train_loss 5.4321, 2210 tokens/s, 1 h 02 min left"
    for other in ("progress", "progress step=1", "progress step=x steps=2", "progress step=1 steps", "step=1 steps=2",
                  "Traceback (most recent call last):"):
        assert parse_line(other) is None, other


def test_the_reporter_prints_the_first_every_nth_and_the_last_step():
    out = io.StringIO()
    reporter = ProgressReporter(steps=7, first_step=2, every=2, tokens_per_step=100, out=out)  # a resume at step 2
    for step in range(3, 8):
        reporter.update(step, train_loss=1.0 / step, train_seconds=0.5 * step, val_loss=2.0 if step == 6 else None)
    lines = [parse_line(line) for line in out.getvalue().splitlines()]
    assert [int(v["step"]) for v in lines] == [3, 4, 6, 7]
    assert [v["tokens_per_s"] for v in lines] == [200, 200, 200, 200]  # the run's so far: 100 tokens a step, 0.5 s each
    assert "val_loss" in lines[2] and "val_loss" not in lines[1]
    assert lines[-1]["eta_s"] == 0 and all(v["steps"] == 7 for v in lines)

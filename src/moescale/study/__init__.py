"""Studies: a spec of axes expanded to runs, executed, collected, fitted and reported."""

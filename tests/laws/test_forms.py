"""Law forms: built-in structure, custom expressions (parsed safely), linear detection."""

from __future__ import annotations

import numpy as np
import pytest

from moescale.errors import UserError
from moescale.laws import BUILTIN, custom, fit_law, get_form
from moescale.laws.forms import form_from_spec, form_spec
from moescale.run import Col

X = {
    "N": np.logspace(6, 8, 5),
    "D": np.logspace(8, 10, 5),
    "E": np.array([1.0, 2.0, 8.0, 16.0, 64.0]),
    "G": np.array([1.0, 2.0, 4.0, 8.0, 16.0]),
}


def test_builtin_names() -> None:
    assert get_form("chinchilla").params == ("E0", "A", "B", "alpha", "beta")
    assert get_form("wang").params == ("A", "B", "alpha", "beta", "gamma", "sigma")
    assert get_form("krajewski").params == ("a", "b", "g", "c", "alpha", "beta", "gamma")
    assert get_form("kaplan").params == ("N_c", "D_c", "alpha_N", "alpha_D")
    assert get_form("kaplan").linear == ()
    assert set(get_form("krajewski").linear) == {"a", "b", "g", "c"}


@pytest.mark.parametrize("law", ["chinchilla", "wang", "krajewski"])
def test_basis_reconstructs_prediction(law: str) -> None:
    """Σ coef_j · basis_j equals the expression: the power-sum structure matches the formula."""
    form = get_form(law)
    rng = np.random.default_rng(1)
    params = {p: float(rng.uniform(0.1, 2.0)) for p in form.params}
    theta = np.array([[params[p] for p in form.nonlinear]])
    phi, off = form.basis(X, theta)
    coef = np.array([params[p] for p in form.linear])
    np.testing.assert_allclose(phi[0] @ coef + off[0], form.predict(X, params), rtol=1e-12)


def test_law_knowledge_lives_on_the_form() -> None:
    assert get_form("krajewski").n_column == Col.PARAMS_TOTAL
    assert get_form("chinchilla").n_column == Col.PARAMS_ACTIVE
    assert [x.column for x in get_form("wang").extras] == [Col.EXPERTS]
    assert [x.plan_flag for x in get_form("krajewski").extras] == ["--granularity"]
    assert get_form("wang").extra_values({}) == {"E": 1.0}
    assert get_form("krajewski").extra_values({"G": 4, "E": 8}) == {"G": 4.0}
    assert get_form("krajewski").dense_values() == {"G": 1.0}
    assert custom("A/N**a + B/D**b").power_terms({}, {}) is None


@pytest.mark.parametrize("law", sorted(BUILTIN))
def test_power_terms_match_prediction(law: str) -> None:
    """The reduction to A_E/N^α + B/D^β + const (closed-form allocation) is the law itself."""
    form = get_form(law)
    params = {p: float(v) for p, v in zip(form.params, np.linspace(0.2, 1.5, 7), strict=False)}
    extras = {x.symbol: 4.0 for x in form.extras}
    terms = form.power_terms(params, extras)
    if terms is None:
        assert form.terms is None  # kaplan: Brent
        return
    a_e, b, alpha, beta, const = terms
    x = {"N": X["N"], "D": X["D"], **{k: np.full(5, v) for k, v in extras.items()}}
    expected = a_e / X["N"] ** alpha + b / X["D"] ** beta + const
    np.testing.assert_allclose(form.predict(x, params), expected, rtol=1e-12)


def test_kaplan_gradient_matches_finite_differences() -> None:
    form = get_form("kaplan")
    assert form.log_gradient is not None
    z = np.array([np.log(8.8e13), np.log(5.4e13), 0.076, 0.095])
    logpred, dlog = form.log_gradient(z, X)
    params = {"N_c": np.exp(z[0]), "D_c": np.exp(z[1]), "alpha_N": z[2], "alpha_D": z[3]}
    np.testing.assert_allclose(logpred, np.log(form.predict(X, params)), rtol=1e-12)
    for k in range(4):
        h = np.zeros(4)
        h[k] = 1e-6
        fd = (form.log_gradient(z + h, X)[0] - form.log_gradient(z - h, X)[0]) / 2e-6
        np.testing.assert_allclose(dlog[:, k], fd, rtol=1e-5, atol=1e-9)


def test_spec_round_trip() -> None:
    form = custom("E0 + A/N**alpha + B/D**beta", grid={"alpha": (0.2, 0.4)}, name="mine")
    assert form_spec(get_form("kaplan")) == {"name": "kaplan"}
    back = form_from_spec(form_spec(form))
    assert back == form and not back.builtin


def test_custom_matches_chinchilla() -> None:
    form = custom("E0 + A/N**alpha + B/D**beta")
    assert form.inputs == ("N", "D")
    assert set(form.linear) == {"E0", "A", "B"}
    assert set(form.nonlinear) == {"alpha", "beta"}
    p = {"E0": 1.7, "A": 400.0, "B": 1000.0, "alpha": 0.3, "beta": 0.4}
    np.testing.assert_allclose(form.predict(X, p), get_form("chinchilla").predict(X, p))
    phi, off = form.basis(X, np.array([[p[q] for q in form.nonlinear]]))
    coef = np.array([p[q] for q in form.linear])
    np.testing.assert_allclose(phi[0] @ coef + off[0], form.predict(X, p), rtol=1e-12)


def test_custom_offset_and_functions() -> None:
    form = custom("A * exp(-k * log(N)) + 2.0 - c")
    assert form.linear == ("A", "c")
    p = {"A": 3.0, "k": 0.2, "c": 0.5}
    phi, off = form.basis(X, np.array([[0.2]]))
    np.testing.assert_allclose(phi[0] @ np.array([3.0, 0.5]) + off[0], form.predict(X, p))


def test_custom_fit_recovers() -> None:
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(6), np.arange(10), indexing="ij")
    x = {"N": np.logspace(6, 8, 6)[i.ravel()], "D": np.logspace(8, 10, 10)[j.ravel()]}
    truth = {"E0": 1.0, "A": 2000.0, "B": 20000.0, "alpha": 0.5, "beta": 0.5}
    y = get_form("chinchilla").predict(x, truth) * np.exp(rng.normal(0, 0.01, 60))
    res = fit_law("E0 + A/N**alpha + B/D**beta", x, y, bootstrap_draws=20, holdout_frac=0)
    ref = fit_law("chinchilla", x, y, bootstrap_draws=0, holdout_frac=0)
    for q in truth:
        assert res.params[q] == pytest.approx(ref.params[q], rel=1e-4)
    assert len(res.bootstrap_params) == 20  # custom forms survive the trip to worker processes


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "N.__class__",
        "A + B[0]",
        "open('x')",
        "lambda: 1",
        "E0 + 'text'",
        "A +* B",
    ],
)
def test_custom_rejects_unsafe_or_invalid(expr: str) -> None:
    with pytest.raises(UserError):
        custom(expr, inputs=("N", "D"))


def test_unknown_law() -> None:
    with pytest.raises(UserError, match="unknown law 'hoffmann'"):
        get_form("hoffmann")


def test_declared_linear_must_be_linear() -> None:
    with pytest.raises(UserError, match="alpha"):
        custom("E0 + A/N**alpha", linear=("E0", "alpha"))


def test_laws_do_not_import_torch():
    """The fitters are plain numerics: fitting on a laptop must not need (or load) torch."""
    import subprocess
    import sys

    code = (
        "import sys, moescale.laws, moescale.commands.fit, moescale.commands.plan; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_custom_refuses_an_input_added_as_a_constant() -> None:
    """Chinchilla as printed, E + A/N^α + B/D^β, would read E as the expert count."""
    with pytest.raises(UserError, match="adds the input E as a term.*E0"):
        custom("E + A/N**alpha + B/D**beta")


def test_custom_law_with_a_constant_extra_input_is_refused() -> None:
    x = {"N": [1e6, 2e6, 4e6, 8e6], "D": [1e9, 2e9, 4e9, 8e9], "E": [8.0] * 4}
    with pytest.raises(UserError, match="two distinct values of E"):
        fit_law("E0 + A/(N**alpha * E**g) + B/D**beta", x, [3, 2.9, 2.8, 2.7], holdout_frac=0)


@pytest.mark.parametrize("expr", ["N + D", "N*D", "log(N)", "1/N**0.5"])
def test_custom_law_without_parameters_is_refused(expr: str) -> None:
    with pytest.raises(UserError, match=r"has no parameters to fit.*E0 \+ A/N"):
        get_form(expr)


@pytest.mark.parametrize("name", ["__builtins__", "__x"])
def test_custom_refuses_dunder_parameter_names(name: str) -> None:
    """__builtins__ would replace eval's builtins; any dunder name is kept out of its globals."""
    with pytest.raises(UserError, match=f"parameter name '{name}' starts with a double under"):
        custom(f"{name} + A/N**alpha")

//! `RINGPOOL_REACTOR_TASK_BUDGET` sets the default of `ReactorConfig::task_budget` (for A/B
//! runs of `ringpool serve`). A test binary of its own: it changes the process environment,
//! which other tests read through the same defaults.

use ringpool_driver::io::ReactorConfig;

#[test]
fn task_budget_env_sets_the_default() {
    // One test function: the environment is process-wide.
    std::env::remove_var("RINGPOOL_REACTOR_TASK_BUDGET");
    let plain = ReactorConfig::default().task_budget;
    assert_eq!(plain, 128);
    std::env::set_var("RINGPOOL_REACTOR_TASK_BUDGET", "8");
    assert_eq!(ReactorConfig::default().task_budget, 8);
    std::env::set_var("RINGPOOL_REACTOR_TASK_BUDGET", "eight");
    assert_eq!(
        ReactorConfig::default().task_budget,
        plain,
        "an unparsable value leaves the built-in default"
    );
    std::env::remove_var("RINGPOOL_REACTOR_TASK_BUDGET");
}

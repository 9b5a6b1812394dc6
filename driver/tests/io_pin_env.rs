//! `RINGPOOL_REACTOR_PIN` sets the default of `ReactorConfig::pin`. A test binary of its own:
//! it changes the process environment, which other tests read through the same defaults.

use std::time::Duration;

use ringpool_driver::io::{self, ReactorConfig, ReactorSet};

/// CPUs the calling thread may run on.
fn allowed_cpus() -> usize {
    // SAFETY: cpu_set_t is plain old data; sched_getaffinity fills it for the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the size of the live local set.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(r, 0, "sched_getaffinity");
    // SAFETY: CPU_COUNT reads the set we own.
    usize::try_from(unsafe { libc::CPU_COUNT(&set) }).unwrap()
}

/// CPUs each reactor of a 2-reactor set built from the default config may run on.
fn reactor_cpus() -> Vec<usize> {
    let mut set = ReactorSet::start(ReactorConfig {
        reactors: 2,
        ..ReactorConfig::default()
    })
    .unwrap();
    let hs: Vec<_> = (0..2)
        .map(|i| {
            set.spawn_on(i, || async {
                io::sleep(Duration::from_millis(1)).await;
                allowed_cpus()
            })
        })
        .collect();
    let out = hs.into_iter().map(|h| h.join_blocking().unwrap()).collect();
    set.shutdown();
    out
}

#[test]
fn reactor_pin_env_sets_the_default() {
    let cpus = allowed_cpus();
    std::env::set_var("RINGPOOL_REACTOR_PIN", "0");
    assert!(
        !ReactorConfig::default().pin,
        "RINGPOOL_REACTOR_PIN=0 unpins"
    );
    assert_eq!(
        reactor_cpus(),
        vec![cpus; 2],
        "unpinned reactors may run anywhere"
    );
    std::env::set_var("RINGPOOL_REACTOR_PIN", "1");
    assert!(ReactorConfig::default().pin);
    std::env::remove_var("RINGPOOL_REACTOR_PIN");
    assert!(ReactorConfig::default().pin, "pinned by default");
    if cpus >= 2 {
        assert_eq!(
            reactor_cpus(),
            vec![1; 2],
            "pinned reactors run on one core each"
        );
    }
}

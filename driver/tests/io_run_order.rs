//! Run order of a reactor's tasks: FIFO, except that `spawn_local_first` tasks get their first
//! poll, and tasks that called `prefer_current_task` every poll after a wake-up, before the
//! tasks waiting in the ordinary queue (FIFO among themselves). The NBD reader relies on it to
//! get newly parsed requests to the device before the replies of a burst of completions are
//! built.

use std::cell::RefCell;
use std::rc::Rc;

use ringpool_driver::io::{self, Notify, ReactorConfig};

fn cfg() -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        arena_bytes: 0,
        ..ReactorConfig::default()
    }
}

type Log = Rc<RefCell<Vec<&'static str>>>;

fn logger(log: &Log, name: &'static str) -> impl std::future::Future<Output = ()> {
    let log = Rc::clone(log);
    async move { log.borrow_mut().push(name) }
}

#[test]
fn first_polls_go_before_queued_tasks_in_fifo_order() {
    let order = io::block_on(&cfg(), async {
        let log: Log = Rc::default();
        let hs = vec![
            io::spawn_local(logger(&log, "a")),
            io::spawn_local(logger(&log, "b")),
            io::spawn_local_first(logger(&log, "first1")),
            io::spawn_local(logger(&log, "c")),
            io::spawn_local_first(logger(&log, "first2")),
        ];
        for h in hs {
            h.await.unwrap();
        }
        let v = log.borrow().clone();
        v
    })
    .unwrap();
    assert_eq!(order, ["first1", "first2", "a", "b", "c"]);
}

#[test]
fn a_preferred_task_runs_first_whenever_it_is_woken() {
    let order = io::block_on(&cfg(), async {
        assert!(
            !io::prefer_current_task(),
            "the block_on root future is not a task"
        );
        let log: Log = Rc::default();
        let (np, n1, n2) = (
            Rc::new(Notify::new()),
            Rc::new(Notify::new()),
            Rc::new(Notify::new()),
        );
        let waiter = |n: &Rc<Notify>, name: &'static str, prefer: bool| {
            let (n, log) = (Rc::clone(n), Rc::clone(&log));
            io::spawn_local(async move {
                if prefer {
                    assert!(io::prefer_current_task());
                }
                for _ in 0..2 {
                    n.notified().await;
                    log.borrow_mut().push(name);
                }
            })
        };
        let hs = vec![
            waiter(&np, "preferred", true),
            waiter(&n1, "t1", false),
            waiter(&n2, "t2", false),
        ];
        for _ in 0..2 {
            // Every task waits on its Notify; wake the preferred one last.
            io::yield_now().await;
            n1.notify_one();
            n2.notify_one();
            np.notify_one();
            io::yield_now().await;
        }
        for h in hs {
            h.await.unwrap();
        }
        let v = log.borrow().clone();
        v
    })
    .unwrap();
    assert_eq!(order, ["preferred", "t1", "t2", "preferred", "t1", "t2"]);
}

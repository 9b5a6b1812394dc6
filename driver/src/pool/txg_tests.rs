//! Unit tests of the txg engine (`txg.rs`).

mod holds {
    use super::super::*;

    #[test]
    fn quiesce_waits_for_holds() {
        let e = TxgEngine::new(4, TxgConfig::default());
        let h = e.hold().unwrap();
        assert_eq!(h.txg(), 5);
        e.request_sync(5);
        let e2 = Arc::clone(&e);
        let t = std::thread::spawn(move || e2.next_to_sync(&|_| false));
        std::thread::sleep(Duration::from_millis(50));
        // New holds go to the next txg while 5 quiesces.
        let h2 = e.hold().unwrap();
        assert_eq!(h2.txg(), 6);
        assert!(!t.is_finished());
        drop(h);
        let (txg, why) = t.join().unwrap().unwrap();
        assert_eq!((txg, why), (5, SyncReason::Requested));
        e.sync_done(5);
        assert_eq!(e.synced_txg(), 5);
        drop(h2);
        e.shutdown();
        assert!(e.next_to_sync(&|_| false).is_none());
    }

    /// A write-back write is acknowledged while it holds the open txg and before it charges
    /// any dirty bytes: the final sync of a shutdown must wait for it, not stop.
    #[test]
    fn final_sync_waits_for_a_hold_without_dirty_bytes() {
        let e = TxgEngine::new(4, TxgConfig::default());
        let h = e.hold().unwrap();
        e.shutdown();
        let e2 = Arc::clone(&e);
        let t = std::thread::spawn(move || e2.next_to_sync(&|_| false));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "the final sync waits for the hold");
        h.add_dirty(4096, 0);
        drop(h);
        let got = t.join().unwrap();
        assert_eq!(got, Some((5, SyncReason::Shutdown)));
        e.sync_done(5);
        assert!(e.next_to_sync(&|_| false).is_none());
    }

    /// Once the final sync is done nothing can take a hold: a change under it would never
    /// commit.
    #[test]
    fn no_hold_after_the_final_sync() {
        let e = TxgEngine::new(4, TxgConfig::default());
        e.shutdown();
        assert!(e.next_to_sync(&|_| false).is_none());
        assert_eq!(e.hold().err(), Some(libc::ESHUTDOWN));
        let mut f = std::pin::pin!(e.hold_throttled());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(r) => assert_eq!(r.err(), Some(libc::ESHUTDOWN)),
            Poll::Pending => {
                panic!("a throttled hold after the final sync waits instead of failing")
            }
        }
    }
}

mod throttle_tests {
    use super::super::*;

    fn engine() -> Arc<TxgEngine> {
        let cfg = TxgConfig {
            delay_scale: Duration::from_micros(500),
            ..TxgConfig::default()
        };
        let e = TxgEngine::new(1, cfg);
        e.cap_dirty(64 << 20);
        e
    }

    #[test]
    fn sync_write_window_follows_the_open_txg_fill() {
        let e = engine();
        let lim = e.limits();
        let cfg = e.config().clone();
        // Empty open txg: the minimum.
        assert_eq!(e.sync_write_window(), cfg.sync_write_min_active);
        // Halfway between 60 % and 90 % of the data limit: halfway between min and max.
        let (lo, hi) = cfg.sync_write_active_dirty_percent;
        let (lo, hi) = (u64::from(lo), u64::from(hi));
        let hold = e.hold().unwrap();
        hold.add_dirty(lim.data_max * (lo + hi) / 200, 0);
        let mid = e.sync_write_window();
        let want = (cfg.sync_write_min_active + cfg.sync_write_max_active) / 2;
        assert!(mid.abs_diff(want) <= 1, "window {mid}, want about {want}");
        // Past the upper bound: the maximum.
        hold.add_dirty(lim.data_max * (hi - lo) / 100, 0);
        assert_eq!(e.sync_write_window(), cfg.sync_write_max_active);
        drop(hold);
        // A txg somebody waits for (FLUSH, export): the maximum while it syncs.
        let e = engine();
        assert_eq!(e.sync_write_window(), cfg.sync_write_min_active);
        let (txg, _) = e.next_to_sync_now().unwrap();
        assert_eq!(e.sync_write_window(), cfg.sync_write_max_active);
        e.sync_done(txg);
        assert_eq!(e.sync_write_window(), cfg.sync_write_min_active);
        // Shutting down: the maximum whatever the fill.
        let e = engine();
        assert_eq!(e.sync_write_window(), cfg.sync_write_min_active);
        e.shutdown();
        assert_eq!(e.sync_write_window(), cfg.sync_write_max_active);
    }

    #[test]
    fn limits_follow_the_slop() {
        let e = engine();
        assert_eq!(
            e.limits(),
            Limits {
                data_sync: (64 << 20) * DATA_SLOPS / 2,
                data_max: (64 << 20) * DATA_SLOPS,
                meta_sync: 16 << 20,
                meta_max: 32 << 20,
            }
        );
        // A large pool is bounded by the configured limits.
        e.cap_dirty(1 << 40);
        let cfg = e.config().clone();
        assert_eq!(
            (e.limits().data_sync, e.limits().data_max),
            (cfg.dirty_sync_bytes, cfg.dirty_max_bytes)
        );
    }

    /// The defaults come from memory (OpenZFS's 10 %, 64 MiB to 4 GiB), sync at half.
    #[test]
    fn default_limits_follow_memory() {
        let cfg = TxgConfig::default();
        if std::env::var_os("RINGPOOL_TXG_DIRTY_MAX_MIB").is_none() {
            let ram = physical_memory();
            assert!(ram > 0, "sysconf knows the memory size");
            assert_eq!(cfg.dirty_max_bytes, (ram / 10).clamp(64 << 20, 4 << 30));
        }
        if std::env::var_os("RINGPOOL_TXG_DIRTY_SYNC_MIB").is_none() {
            assert_eq!(cfg.dirty_sync_bytes, cfg.dirty_max_bytes / 2);
        }
    }

    /// However large the configured limits, a small pool's slop bounds a txg: its data to
    /// `DATA_SLOPS` slops (a sync at half), its metadata, what the sync takes from the slop,
    /// to half a slop (a sync at a quarter).
    #[test]
    fn huge_configured_limits_stay_within_a_small_slop() {
        let e = TxgEngine::new(
            1,
            TxgConfig {
                dirty_sync_bytes: 1 << 40,
                dirty_max_bytes: 1 << 41,
                ..TxgConfig::default()
            },
        );
        for slop in [16u64 << 20, 64 << 20, 128 << 20] {
            e.cap_dirty(slop);
            assert_eq!(
                e.limits(),
                Limits {
                    data_sync: slop * DATA_SLOPS / 2,
                    data_max: slop * DATA_SLOPS,
                    meta_sync: slop / 4,
                    meta_max: slop / 2,
                },
                "slop {slop}"
            );
        }
        // A larger slop lets the data grow with it, the metadata still within half of it.
        e.cap_dirty(320 << 20);
        let l = e.limits();
        assert_eq!(
            (l.data_sync, l.data_max),
            ((320 << 20) * DATA_SLOPS / 2, (320 << 20) * DATA_SLOPS)
        );
        assert_eq!((l.meta_sync, l.meta_max), (80 << 20, 160 << 20));
    }

    #[test]
    fn delay_grows_toward_the_limit_and_spaces_writers() {
        let e = engine();
        let h = e.hold().unwrap();
        let data_max = e.limits().data_max;
        // Below 60% of both limits: no delay.
        h.add_dirty(data_max / 2, 10 << 20);
        assert_eq!(e.write_delay(), Duration::ZERO);
        // 80% of the data limit: scale * 20 / 20 = 500 us for the first writer, and the next
        // one is let through one step after it.
        h.add_dirty(data_max * 8 / 10 - data_max / 2, 0);
        let d1 = e.write_delay();
        let d2 = e.write_delay();
        assert!(d1 <= Duration::from_micros(500), "{d1:?}");
        assert!(d1 >= Duration::from_micros(400), "{d1:?}");
        assert!(d2 >= d1 + Duration::from_micros(400), "{d1:?} {d2:?}");
        // Metadata counts too: at 95% of its limit, 500 us * 35 / 5 = 3.5 ms.
        let e2 = engine();
        let h2 = e2.hold().unwrap();
        h2.add_dirty(0, (32 << 20) * 95 / 100);
        let d = e2.write_delay();
        assert!(d >= Duration::from_micros(3400), "{d:?}");
        assert!(d <= Duration::from_micros(3500), "{d:?}");
        assert_eq!(e2.throttle_stats().0, 1);
        drop((h, h2));
    }

    #[test]
    fn metadata_starts_a_sync_and_blocks_at_its_limit() {
        let e = engine();
        let h = e.hold().unwrap();
        h.add_dirty(4096, 16 << 20);
        drop(h);
        let (txg, why) = e.next_to_sync(&|_| false).unwrap();
        assert_eq!((txg, why), (2, SyncReason::Dirty));
        // The open txg at its metadata limit: a throttled hold waits (and is counted once).
        let h = e.hold().unwrap();
        h.add_dirty(0, 32 << 20);
        drop(h);
        assert_eq!(
            e.write_delay(),
            Duration::ZERO,
            "at the limit the hold waits instead"
        );
        let mut fut = e.hold_throttled();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(e.throttle_stats().2, 1);
        // Closing the full txg lets the writer into the next one.
        e.sync_done(2);
        e.request_sync(3);
        let (t, _) = e.next_to_sync(&|_| false).unwrap();
        assert_eq!(t, 3);
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(Ok(h)) => assert_eq!(h.txg(), 4),
            other => panic!("hold not granted: {other:?}"),
        }
    }
}

mod idle {
    use super::super::*;

    /// With nothing held, dirty or queued the sync thread sleeps until a change starts,
    /// however short the timer: a periodic wake-up for nothing lands on a CPU that a reader
    /// may be waiting for. The first hold wakes it and starts the open txg's timer, which then
    /// syncs the change without anybody asking.
    #[test]
    fn the_sync_thread_sleeps_until_a_change_starts() {
        let cfg = TxgConfig {
            timeout: Duration::from_millis(10),
            ..TxgConfig::default()
        };
        let e = TxgEngine::new(4, cfg);
        let e2 = Arc::clone(&e);
        let t = std::thread::spawn(move || e2.next_to_sync(&|_| false));
        // Thirty timer periods: a thread woken by its timer would have woken here.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(e.sync_wakeups(), 0, "the idle sync thread woke up");
        assert!(!t.is_finished());
        let h = e.hold().unwrap();
        h.add_dirty(4096, 0);
        drop(h);
        assert_eq!(t.join().unwrap(), Some((5, SyncReason::Timeout)));
        assert!(e.sync_wakeups() >= 1);
        e.sync_done(5);
        e.shutdown();
        assert!(e.next_to_sync(&|_| false).is_none());
    }

    /// Lowered dirty limits can make a sync due without a new byte: `cap_dirty` wakes the
    /// sync thread, which no longer looks on its own every 250 ms.
    #[test]
    fn lowered_limits_start_a_due_sync() {
        let cfg = TxgConfig {
            timeout: Duration::from_secs(3600),
            ..TxgConfig::default()
        };
        let e = TxgEngine::new(4, cfg);
        e.cap_dirty(1 << 40);
        let h = e.hold().unwrap();
        h.add_dirty(8 << 20, 0);
        let e2 = Arc::clone(&e);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(e2.next_to_sync(&|_| false)));
        drop(h);
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "8 MiB is below the sync threshold"
        );
        // A small pool's slop: the sync threshold drops to 4 MiB.
        e.cap_dirty(8 << 20);
        let got = rx.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            got.ok(),
            Some(Some((5, SyncReason::Dirty))),
            "no sync started"
        );
        e.sync_done(5);
        e.shutdown();
        assert!(e.next_to_sync(&|_| false).is_none());
    }
}

import Testing
@testable import Reactor
import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// SIGWINCH: no other test uses it, and its default action is to be ignored, so a signal left
/// pending when the test restores the mask harms nothing.
@Suite struct SignalWatcherTests {
    @Test(arguments: backends)
    func deliversEachSignalUntilStopped(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.read])
        var previous = sigset_t()
        pthread_sigmask(SIG_SETMASK, nil, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        var delivered: [Int32] = []
        let watcher = try SignalWatcher([SIGWINCH], reactor: reactor) { [unowned reactor] signal in
            delivered.append(signal)
            if delivered.count == 2 { reactor.stop() }
        }
        var mask = sigset_t()
        pthread_sigmask(SIG_BLOCK, nil, &mask)
        #expect(sigismember(&mask, SIGWINCH) == 1, "blocked while watched")
        // To this thread, which has the signal blocked and runs the loop; twice, a turn apart,
        // so the second is read by the read issued after the first.
        let sender = Recorder()
        sender.next = { _, _ in _ = pthread_kill(pthread_self(), SIGWINCH) }
        _ = reactor.timer(nanoseconds: 10_000_000, handler: sender, tag: 1)
        _ = reactor.timer(nanoseconds: 30_000_000, handler: sender, tag: 2)
        try runLoop(reactor)
        #expect(delivered == [SIGWINCH, SIGWINCH])

        watcher.stop()
        _ = pthread_kill(pthread_self(), SIGWINCH)
        try runBriefly(reactor)
        #expect(delivered.count == 2, "nothing after stop")
    }

    /// pf_signalfd blocks the signals only once the descriptor exists (in a child process that
    /// runs out of descriptors).
    @Test func aSignalfdThatCannotBeMadeLeavesTheSignalsUnblocked() throws {
        let probe = try runProbe("signalfd", backends[0])
        #expect(probe.status == 0, "\(probe.output)")
        #expect(probe.fields["failure"] == "EMFILE", "\(probe.output)")
        #expect(probe.fields["blocked_after_failure"] == "false", "\(probe.output)")
        #expect(probe.fields["blocked_after_success"] == "true", "\(probe.output)")
    }
}

import CLinuxShim
import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One turn: deliver, submit and wait, reap, fire timers.
extension UringReactor {
    public func run() throws {
        core.stopped = false
        guard enable() else { throw takeFailure()! }
        while !core.stopped {
            core.drain()
            if let failure = takeFailure() { throw failure }
            if core.stopped { break }
            try submitAndWait()
            reap()
            core.fireTimers()
        }
    }

    /// Submits what the turn queued and waits for one completion, for the next timer, or not at
    /// all when completions or deferred tasks are already waiting.
    func submitAndWait() throws {
        publishBuffers()
        let result: Int32
        if core.hasWork {
            result = io_uring_submit_and_get_events(ring)
        } else if let deadline = core.timers.nextDeadline {
            let now = Clock.nanoseconds()
            if deadline <= now {
                result = io_uring_submit_and_get_events(ring)
            } else {
                let delay = min(deadline - now, 60_000_000_000)
                var timeout = __kernel_timespec(tv_sec: Int64(delay / 1_000_000_000), tv_nsec: Int64(delay % 1_000_000_000))
                var first: UnsafeMutablePointer<io_uring_cqe>?
                result = io_uring_submit_and_wait_timeout(ring, &first, 1, &timeout, nil)
            }
        } else {
            result = io_uring_submit_and_wait(ring, 1)
        }
        if result < 0 {
            switch -result {
            case ETIME, EINTR, EAGAIN, EBUSY: break
            default: throw SystemError("io_uring_enter", errno: -result)
            }
        }
    }
}

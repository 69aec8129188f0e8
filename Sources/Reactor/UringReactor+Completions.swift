import CLinuxShim
import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Turning CQEs into completions for `LoopCore`: retries, multishot accept, buffer ids, and the
/// completions of cancelled operations, which are swallowed.
extension UringReactor {
    func reap() {
        reaping = true
        defer { reaping = false }
        while true {
            let count = Int(io_uring_peek_batch_cqe(ring, completions, UInt32(completionBatch)))
            if count == 0 { break }
            for position in 0..<count {
                let cqe = completions[position]!.pointee
                complete(cqe.user_data, cqe.res, cqe.flags)
            }
            io_uring_cq_advance(ring, UInt32(count))
        }
        publishBuffers()
    }

    func complete(_ userData: UInt64, _ result: Int32, _ flags: UInt32) {
        if userData >> 62 == 3 { return }
        let index = Int(truncatingIfNeeded: userData & 0xFFFF_FFFF)
        let generation = UInt32(truncatingIfNeeded: userData >> 32) & Self.generationMask
        guard index < slots.count, slots[index].state != .free,
              slots[index].generation & Self.generationMask == generation else {
            if flags & pf_ioring_cqe_f_buffer != 0 { recycle(flags) }
            return
        }
        if userData >> 62 != Self.operationPart {
            // A poll in front posts only when it fails; the operation behind it then ends with
            // -ECANCELED, and this is the error to report.
            if slots[index].linkError == 0 { slots[index].linkError = result < 0 ? result : -ECANCELED }
            return
        }
        let operation = slots[index].request.operation
        let more = flags & pf_ioring_cqe_f_more != 0
        if slots[index].state == .cancelled {
            if operation == .accept && result >= 0 { Glibc.close(result) }
            if flags & pf_ioring_cqe_f_buffer != 0 { recycle(flags) }
            if !more { release(index) }
            return
        }
        var result = result
        if result == -ECANCELED && slots[index].linkError != 0 { result = slots[index].linkError }
        slots[index].linkError = 0
        let handler = slots[index].handler!
        let tag = slots[index].tag

        switch operation {
        case .accept:
            if result >= 0 {
                core.post(handler, Completion(operation: .accept, tag: tag, result: result))
                // The multishot ends without an error when the completion queue overflowed.
                if !more { issue(index) }
                return
            }
            // An error always ends the multishot. Like epoll, a connection that went away
            // before it was taken is not reported.
            switch -result {
            case let code where code == EAGAIN || LoopCore.acceptSkips(after: code):
                issue(index)
            case let code where LoopCore.acceptRests(after: code):
                core.post(handler, Completion(operation: .accept, tag: tag, result: result))
                slots[index].state = .resting
                slots[index].restTimer = core.timers.add(after: LoopCore.acceptRestNanoseconds, handler: acceptRest, tag: UInt32(index))
            default:
                core.post(handler, Completion(operation: .accept, tag: tag, result: result))
                release(index)
            }
        case .receive:
            if flags & pf_ioring_cqe_f_buffer != 0 {
                let bid = Int(flags >> pf_ioring_cqe_buffer_shift)
                if result > 0 {
                    let buffer = ringBuffers[bid]
                    ringBuffers[bid] = buffers.take()
                    offer(bid)
                    core.post(handler, Completion(operation: .receive, tag: tag, result: result, buffer: buffer))
                    release(index)
                    return
                }
                offer(bid)
            }
            // The ring ran dry in a burst; it has been refilled by the completions before this one.
            if result == -ENOBUFS {
                issue(index)
                return
            }
            if retry(index, result) { return }
            core.post(handler, Completion(operation: .receive, tag: tag, result: min(result, 0)))
            release(index)
        case .read, .write, .writev, .splice:
            if retry(index, result) { return }
            core.post(handler, Completion(operation: operation, tag: tag, result: result))
            release(index)
        case .poll:
            core.post(handler, Completion(operation: .poll, tag: tag, result: min(result, 0)))
            release(index)
        case .connect, .timer:
            core.post(handler, Completion(operation: operation, tag: tag, result: result))
            release(index)
        }
    }

    /// -EAGAIN: the kernel did not wait for the descriptor (a splice, or a non-blocking file
    /// without async support), so wait with a poll in front and try again. -EINTR: try again.
    func retry(_ index: Int, _ result: Int32) -> Bool {
        if result == -EAGAIN {
            issue(index, pollFirst: true)
            return true
        }
        if result == -EINTR {
            issue(index)
            return true
        }
        return false
    }

    /// Called by the rest timer of a multishot accept.
    func wake(_ index: Int) {
        guard index < slots.count, slots[index].state == .resting else { return }
        slots[index].state = .active
        issue(index)
    }
}

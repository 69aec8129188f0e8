import CLinuxShim
import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Putting SQEs in the queue: an operation (behind linked polls when it must wait for readiness),
/// its cancellation, and the reactor's own requests.
extension UringReactor {
    func issue(_ index: Int, pollFirst: Bool = false) {
        let request = slots[index].request
        if case .splice(let source, let destination, let count, let socket) = request {
            // io_uring runs splice in a worker that gives up at once on non-blocking descriptors,
            // so it waits behind polls: the socket for its direction, then the pipe for room or
            // data (which epoll leaves to the caller; here a full pipe waits instead of spinning).
            reserve(3)
            let fromSocket = socket == source
            let pipe = fromSocket ? destination : source
            linkPoll(socket, fromSocket ? POLLIN : POLLOUT, index, Self.firstPollPart)
            linkPoll(pipe, fromSocket ? POLLOUT : POLLIN, index, Self.secondPollPart)
            slots[index].links = 2
            let sqe = nextEntry()
            let flags = pf_splice_move | pf_splice_nonblock
            io_uring_prep_splice(sqe, source, -1, destination, -1, UInt32(clamping: count), flags)
            io_uring_sqe_set_data64(sqe, userData(index, Self.operationPart))
            return
        }
        reserve(pollFirst ? 2 : 1)
        if pollFirst {
            linkPoll(request.descriptor, request.writes ? POLLOUT : POLLIN, index, Self.firstPollPart)
        }
        slots[index].links = pollFirst ? 1 : 0
        let sqe = nextEntry()
        // Offset -1: the file position, as read(2) and write(2) use (ignored by sockets and pipes).
        let current = UInt64.max
        switch request {
        case .accept(let fd):
            io_uring_prep_multishot_accept(sqe, fd, nil, nil, pf_accept_flags)
        case .connect(let fd, let length):
            let address = UnsafeRawPointer(addressStorage(index)).assumingMemoryBound(to: sockaddr.self)
            io_uring_prep_connect(sqe, fd, address, length)
        case .receive(let fd):
            io_uring_prep_read(sqe, fd, nil, UInt32(buffers.bufferSize), current)
            sqe.pointee.flags |= UInt8(pf_iosqe_buffer_select)
            sqe.pointee.buf_group = Self.bufferGroup
        case .read(let fd, let pointer, let count):
            io_uring_prep_read(sqe, fd, pointer, UInt32(clamping: count), current)
        case .write(let fd, let pointer, let count):
            io_uring_prep_write(sqe, fd, pointer, UInt32(clamping: count), current)
        case .writev(let fd, let vectors, let count):
            io_uring_prep_writev(sqe, fd, vectors, UInt32(clamping: count), current)
        case .poll(let fd):
            io_uring_prep_poll_add(sqe, fd, UInt32(POLLIN))
        case .splice:
            preconditionFailure("a splice is issued above, behind its polls")
        }
        io_uring_sqe_set_data64(sqe, userData(index, Self.operationPart))
    }

    /// A one-shot poll linked to the next SQE; it posts a completion only if it fails.
    func linkPoll(_ fd: FileDescriptor, _ events: Int32, _ index: Int, _ part: UInt64) {
        let sqe = nextEntry()
        io_uring_prep_poll_add(sqe, fd, UInt32(events))
        sqe.pointee.flags |= UInt8(pf_iosqe_io_link | pf_iosqe_cqe_skip_success)
        io_uring_sqe_set_data64(sqe, userData(index, part))
    }

    /// One cancellation per SQE the operation may have in the kernel; the ones that find
    /// nothing answer -ENOENT, which is ignored like every answer to the reactor's own requests.
    func cancel(_ index: Int) {
        unlist(index)
        switch slots[index].state {
        case .active where !enabled:
            withdraw(index)
            release(index)
        case .active:
            slots[index].state = .cancelled
            let links = UInt64(slots[index].links)
            reserve(UInt32(links) + 1)
            for part in 0...links {
                let sqe = nextEntry()
                io_uring_prep_cancel64(sqe, userData(index, part), 0)
                sqe.pointee.flags |= UInt8(pf_iosqe_cqe_skip_success)
                io_uring_sqe_set_data64(sqe, Self.internalData)
            }
        case .resting:
            core.timers.cancel(slots[index].restTimer)
            release(index)
        case .free, .cancelled:
            break
        }
    }

    /// Before the first submission nothing has reached the kernel: the operation's SQEs are still
    /// ours to fill, and become no-ops that post nothing. (Submitting them to cancel them would
    /// make the closing thread the ring's owner.)
    ///
    /// They are found among the SQEs `io_uring_get_sqe` handed out so far (`unsubmitted`), and
    /// rewritten with liburing's own `io_uring_prep_nop`; no field of `struct io_uring` is read or
    /// written. In liburing 2.3, an SQE is the caller's to fill until `io_uring_submit`
    /// (src/include/liburing.h, `_io_uring_get_sqe`, lines 1251-1280): only the submission's
    /// `__io_uring_flush_sq` (src/queue.c, lines 200-231) moves the tail the kernel reads.
    /// `io_uring_prep_nop` goes through `io_uring_prep_rw` (liburing.h, lines 363-380 and 545-548),
    /// which resets the opcode, descriptor, addresses and flags, IOSQE_IO_LINK of a linked poll
    /// among them, so a withdrawn chain does not swallow the next SQE.
    func withdraw(_ index: Int) {
        let operation = userData(index, Self.operationPart)
        for sqe in unsubmitted {
            let data = sqe.pointee.user_data
            guard data >> 62 != 3, data & ~(3 << 62) == operation else { continue }
            io_uring_prep_nop(sqe)
            sqe.pointee.flags = UInt8(pf_iosqe_cqe_skip_success)
            io_uring_sqe_set_data64(sqe, Self.internalData)
        }
    }

    /// An SQE to fill, from a queue `reserve` has made room in. Until the first submission its
    /// address is kept for `withdraw`.
    @inline(__always)
    func nextEntry() -> UnsafeMutablePointer<io_uring_sqe> {
        let sqe = io_uring_get_sqe(ring)!
        if !enabled { unsubmitted.append(sqe) }
        return sqe
    }

    /// Makes room for `count` SQEs that must go in together (a linked chain must not be split
    /// by a submission).
    func reserve(_ count: UInt32) {
        var attempts = 0
        while io_uring_sq_space_left(ring) < count {
            attempts += 1
            precondition(attempts < 100, "io_uring: the submission queue stays full")
            guard enable() else { fatalError("io_uring: \(failure!)") }
            publishBuffers()
            let result = io_uring_submit(ring)
            // A completion queue too full to take more refuses submissions until it is read.
            if result == -EBUSY && !reaping { reap() } else { record(result, "io_uring_submit") }
        }
    }

    func record(_ result: Int32, _ call: String) {
        if result >= 0 || failure != nil { return }
        switch -result {
        case EINTR, EAGAIN, EBUSY: return
        default: failure = SystemError(call, errno: -result)
        }
    }

    func takeFailure() -> SystemError? {
        defer { failure = nil }
        return failure
    }

    /// Requests still in the kernel may write into memory their handlers own: cancel them all
    /// and wait (briefly) for the kernel to let go before the ring is torn down.
    func cancelEverything() {
        guard live > 0, enabled else { return }
        for index in slots.indices {
            switch slots[index].state {
            case .active: slots[index].state = .cancelled
            case .resting: release(index)
            case .free, .cancelled: break
            }
        }
        guard live > 0 else { return }
        reserve(1)
        let sqe = nextEntry()
        io_uring_prep_cancel64(sqe, 0, Int32(pf_ioring_async_cancel_any | pf_ioring_async_cancel_all))
        io_uring_sqe_set_data64(sqe, Self.internalData)
        for _ in 0..<50 where live > 0 {
            var timeout = __kernel_timespec(tv_sec: 0, tv_nsec: 10_000_000)
            var first: UnsafeMutablePointer<io_uring_cqe>?
            let result = io_uring_submit_and_wait_timeout(ring, &first, 1, &timeout, nil)
            if result < 0 && result != -ETIME && result != -EINTR { break }
            reap()
        }
    }
}

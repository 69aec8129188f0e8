import CLinuxShim
import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The completion backend over io_uring (liburing 2.3; Linux 5.19 at least, 6.1 for the best
/// ring flags). Every operation is submitted to the kernel, which waits on the descriptor
/// itself; the loop only submits, waits for completions and hands them to their handlers.
///
/// Each operation lives in a slot of a table from the moment it is issued until its last
/// completion has arrived. The slot's index and generation are the `user_data` of its SQEs, so
/// the data path allocates nothing: slots come from a free list, completions go to `LoopCore`.
///
/// `receive` reads into a provided-buffer ring (`io_uring_register_buf_ring`) filled from the
/// `BufferPool`: the kernel picks a buffer only when bytes arrive, so a quiet socket holds none,
/// and the read costs no system call of its own. The alternative (POLL_ADD, then a plain `read`
/// into a pool buffer) would match epoll to the letter but pay one extra system call per
/// receive. The price of the ring: its buffers count as in use in `buffers.inUse` for the whole
/// life of the reactor (`bufferRingEntries` of them, taken at start-up).
///
/// The ring belongs to the first thread that submits to it (`SINGLE_ISSUER`, enabled lazily),
/// normally the one that calls `run()`; like the epoll backend, it is not to be shared.
public final class UringReactor: ReactorBackend {
    public let name = "io_uring"
    /// Whether a splice is first tried inline (see `splice`); tests turn it off to exercise the ring.
    var spliceInline = true
    public let buffers: BufferPool

    /// How many pool buffers the kernel can choose from for `receive` at once. When a burst
    /// finds the ring empty, the reads fail with -ENOBUFS and are issued again after refilling.
    static let bufferRingEntries = BufferPool.buffersPerSlab
    private static let bufferGroup: UInt16 = 0
    private static let submissionEntries: UInt32 = 1024
    private static let completionEntries: UInt32 = 8192

    private enum State: UInt8 {
        case free
        /// In the kernel; its completion goes to the handler.
        case active
        /// Cancelled by `close`: its completions are swallowed, and the slot (with its handler)
        /// is kept until the last of them has arrived.
        case cancelled
        /// A multishot accept waiting for `LoopCore.acceptRestNanoseconds` after a resource error.
        case resting
    }

    private struct Slot {
        var handler: CompletionHandler?
        var state = State.free
        var operation = Operation.read
        var tag: UInt32 = 0
        var generation: UInt32 = 0
        /// The descriptor `close` finds the slot under (for splice, the socket).
        var fd: FileDescriptor = -1
        var source: FileDescriptor = -1
        var destination: FileDescriptor = -1
        var pointer: UnsafeMutableRawPointer?
        var count = 0
        /// Polls linked in front of the operation in its current submission (0, 1 or 2).
        var links: UInt8 = 0
        /// The error of a failed poll in front, reported instead of the operation's -ECANCELED.
        var linkError: Int32 = 0
        var restTimer: TimerID = 0
        /// Linked through `next`: the free list while free, the slots of `fd` while in use.
        var listed = false
        var next: Int32 = -1
        var previous: Int32 = -1
    }

    // user_data: part (2 bits) | generation (30 bits) | slot index (32 bits). Part 0 is the
    // operation, 1 and 2 the polls linked in front of it, 3 the reactor's own requests.
    private static let generationMask: UInt32 = 0x3FFF_FFFF
    private static let operationPart: UInt64 = 0
    private static let firstPollPart: UInt64 = 1
    private static let secondPollPart: UInt64 = 2
    private static let internalData: UInt64 = 3 << 62

    private let ring: UnsafeMutablePointer<io_uring>
    private let startsDisabled: Bool
    private var enabled = false
    private let core = LoopCore()
    private var slots: [Slot] = []
    private var freeHead: Int32 = -1
    private var fdHeads: [Int32] = []
    /// Slots not free: when none are left the kernel holds nothing of ours.
    private var live = 0
    private let completions: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private let completionBatch = 256
    private var reaping = false
    /// A submission failure seen where nothing can throw; `run()` throws it.
    private var failure: SystemError?

    private let bufferRing: UnsafeMutablePointer<io_uring_buf_ring>
    private let bufferRingBytes: Int
    /// The pool buffer behind each buffer id of the ring.
    private var ringBuffers: [BufferID]
    private var buffersToPublish: Int32 = 0

    /// Connect addresses, kept until the kernel has read them; in chunks so they never move.
    private var addressChunks: [UnsafeMutablePointer<sockaddr_storage>] = []
    private static let addressesPerChunk = 64

    private lazy var acceptRest = AcceptRest { [unowned self] in wake(Int($0)) }

    /// The ring set-ups tried in turn. DEFER_TASKRUN (6.1) runs completion work only when this
    /// thread waits, so nothing interrupts it; COOP_TASKRUN (5.19) at least spares it the IPIs.
    /// R_DISABLED lets the thread that first submits, not the one that builds the reactor,
    /// become the one issuer.
    @_spi(Testing) public static let setups: [UInt32] = [
        pf_ioring_setup_single_issuer | pf_ioring_setup_defer_taskrun | pf_ioring_setup_r_disabled
            | pf_ioring_setup_submit_all,
        pf_ioring_setup_coop_taskrun | pf_ioring_setup_submit_all,
        0,
    ]

    /// The set-up flags the kernel accepted.
    let setupFlags: UInt32

    public convenience init(bufferSize: Int = BufferPool.defaultBufferSize) throws {
        try self.init(bufferSize: bufferSize, setups: Self.setups)
    }

    /// Tries `setups` in turn, moving on only when the kernel refuses flags it does not know.
    @_spi(Testing) public init(bufferSize: Int, setups: [UInt32]) throws {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        ring.initialize(to: io_uring())
        var result: Int32 = -EINVAL
        var chosen: UInt32 = 0
        for flags in setups {
            var params = io_uring_params()
            params.flags = flags | pf_ioring_setup_cqsize
            params.cq_entries = Self.completionEntries
            result = io_uring_queue_init_params(Self.submissionEntries, ring, &params)
            if result == 0 {
                chosen = flags
                break
            }
            // Only an unknown flag is worth another try; ENOSYS, EPERM or ENOMEM are final.
            if result != -EINVAL { break }
        }
        guard result == 0 else {
            ring.deallocate()
            throw SystemError("io_uring_queue_init", errno: -result)
        }
        func fail(_ call: String, _ errno: Int32, _ subject: String = "") -> SystemError {
            io_uring_queue_exit(ring)
            ring.deallocate()
            return SystemError(call, errno: errno, subject: subject)
        }
        if ring.pointee.features & pf_ioring_feat_cqe_skip == 0 {
            throw fail("io_uring_queue_init", EOPNOTSUPP, "(no IORING_FEAT_CQE_SKIP)")
        }
        if let missing = Self.missingOpcode(ring) {
            throw fail("io_uring_get_probe", EOPNOTSUPP, "(no opcode \(missing))")
        }

        let entries = Self.bufferRingEntries
        let bytes = max(entries * MemoryLayout<io_uring_buf>.stride, Int(getpagesize()))
        guard let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else {
            throw fail("mmap", pf_errno())
        }
        var registration = io_uring_buf_reg()
        registration.ring_addr = UInt64(UInt(bitPattern: memory))
        registration.ring_entries = UInt32(entries)
        registration.bgid = Self.bufferGroup
        let registered = io_uring_register_buf_ring(ring, &registration, 0)
        if registered != 0 {
            munmap(memory, bytes)
            throw fail("io_uring_register_buf_ring", -registered)
        }

        self.ring = ring
        setupFlags = chosen
        startsDisabled = chosen & pf_ioring_setup_r_disabled != 0
        bufferRing = memory.assumingMemoryBound(to: io_uring_buf_ring.self)
        bufferRingBytes = bytes
        buffers = BufferPool(bufferSize: bufferSize)
        ringBuffers = Array(repeating: BufferPool.none, count: entries)
        completions = .allocate(capacity: completionBatch)
        io_uring_buf_ring_init(bufferRing)
        for bid in 0..<entries {
            ringBuffers[bid] = buffers.take()
            offer(bid)
        }
        publishBuffers()
        grow()
    }

    deinit {
        cancelEverything()
        io_uring_queue_exit(ring)
        ring.deallocate()
        munmap(UnsafeMutableRawPointer(bufferRing), bufferRingBytes)
        completions.deallocate()
        for chunk in addressChunks { chunk.deallocate() }
    }

    /// Whether the running kernel has the io_uring opcodes `operation` is built on.
    public static func kernelSupports(_ operation: Operation) -> Bool {
        guard let supported = probedOpcodes else { return false }
        return opcodes(for: operation).allSatisfy { Int($0) < supported.count && supported[Int($0)] }
    }

    private static let probedOpcodes: [Bool]? = {
        guard let probe = io_uring_get_probe() else { return nil }
        defer { io_uring_free_probe(probe) }
        return (0..<256).map { io_uring_opcode_supported(probe, Int32($0)) != 0 }
    }()

    private static func opcodes(for operation: Operation) -> [UInt32] {
        switch operation {
        case .accept: return [IORING_OP_ACCEPT.rawValue]
        case .connect: return [IORING_OP_CONNECT.rawValue]
        case .receive, .read: return [IORING_OP_READ.rawValue]
        case .write: return [IORING_OP_WRITE.rawValue]
        case .writev: return [IORING_OP_WRITEV.rawValue]
        case .splice: return [IORING_OP_SPLICE.rawValue, IORING_OP_POLL_ADD.rawValue]
        case .poll: return [IORING_OP_POLL_ADD.rawValue]
        case .timer: return []
        }
    }

    private static func missingOpcode(_ ring: UnsafeMutablePointer<io_uring>) -> UInt32? {
        guard let probe = io_uring_get_probe_ring(ring) else { return IORING_OP_LAST.rawValue }
        defer { io_uring_free_probe(probe) }
        let needed = [Operation.accept, .connect, .read, .write, .writev, .splice, .poll].flatMap(opcodes(for:))
            + [IORING_OP_ASYNC_CANCEL.rawValue]
        return needed.first { io_uring_opcode_supported(probe, Int32($0)) == 0 }
    }

    // MARK: operations

    public func accept(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.accept, fd, handler, tag))
    }

    public func connect(_ fd: FileDescriptor, address: SocketAddress, handler: CompletionHandler, tag: UInt32) {
        let index = claim(.connect, fd, handler, tag)
        let storage = addressStorage(index)
        address.withSockaddr { pointer, length in
            UnsafeMutableRawPointer(storage).copyMemory(from: pointer, byteCount: Int(length))
            slots[index].count = Int(length)
        }
        issue(index)
    }

    public func receive(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.receive, fd, handler, tag))
    }

    public func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {
        let index = claim(.read, fd, handler, tag)
        slots[index].pointer = buffer
        slots[index].count = count
        issue(index)
    }

    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {
        let index = claim(.write, fd, handler, tag)
        slots[index].pointer = UnsafeMutableRawPointer(mutating: buffer)
        slots[index].count = count
        issue(index)
    }

    public func writev(_ fd: FileDescriptor, vectors: UnsafePointer<iovec>, count: Int, handler: CompletionHandler, tag: UInt32) {
        let index = claim(.writev, fd, handler, tag)
        slots[index].pointer = UnsafeMutableRawPointer(mutating: vectors)
        slots[index].count = count
        issue(index)
    }

    public func splice(from source: FileDescriptor, to destination: FileDescriptor, count: Int, socket: FileDescriptor,
                       handler: CompletionHandler, tag: UInt32) {
        // IORING_OP_SPLICE always runs on a kernel worker thread (measured: about 1.6x the CPU per
        // GB of an inline splice here). Try it inline, non-blocking, first; only a splice that
        // would block goes to the ring, behind its polls.
        if spliceInline {
            let result = pf_splice(source, destination, count, pf_splice_move | pf_splice_nonblock)
            if result >= 0 {
                core.post(handler, Completion(operation: .splice, tag: tag, result: Int32(truncatingIfNeeded: result)))
                return
            }
            let code = pf_errno()
            if code != EAGAIN && code != EINTR {
                core.post(handler, Completion(operation: .splice, tag: tag, result: -code))
                return
            }
        }
        let index = claim(.splice, socket, handler, tag)
        slots[index].source = source
        slots[index].destination = destination
        slots[index].count = count
        issue(index)
    }

    public func pollReadable(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.poll, fd, handler, tag))
    }

    public func timer(nanoseconds: UInt64, handler: CompletionHandler, tag: UInt32) -> TimerID {
        core.timers.add(after: nanoseconds, handler: handler, tag: tag)
    }

    public func cancelTimer(_ id: TimerID) { core.timers.cancel(id) }

    public func close(_ fd: FileDescriptor) {
        guard fd >= 0 else { return }
        if Int(fd) < fdHeads.count {
            var next = fdHeads[Int(fd)]
            while next >= 0 {
                let index = Int(next)
                next = slots[index].next
                cancel(index)
            }
        }
        // SQEs not yet submitted name `fd` by its number, which the close below frees for reuse:
        // they go in first, with the cancellations. Running the completion work too lets the
        // cancelled requests drop their hold on the file, so the close takes effect now. (Before
        // the first submission, `cancel` has withdrawn them instead.)
        if enabled && io_uring_sq_ready(ring) > 0 {
            publishBuffers()
            let result = io_uring_submit_and_get_events(ring)
            record(result, "io_uring_submit")
        }
        Glibc.close(fd)
    }

    // TODO(arch-reactor): on io_uring, call `quiet` on the cancellations' completion.
    public func close(_ fd: FileDescriptor, quiet: @escaping () -> Void) {
        close(fd)
        quiet()
    }

    public func spliceNow(from source: FileDescriptor, to destination: FileDescriptor, count: Int) -> Int {
        let moved = pf_splice(source, destination, count, pf_splice_move | pf_splice_nonblock)
        return moved >= 0 ? moved : -Int(pf_errno())
    }

    public func schedule(_ task: DeferredTask) { core.addDeferred(task) }

    public func stop() { core.stopped = true }

    // MARK: the loop

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
    private func submitAndWait() throws {
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

    private func reap() {
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

    // MARK: completions

    private func complete(_ userData: UInt64, _ result: Int32, _ flags: UInt32) {
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
        let operation = slots[index].operation
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
    private func retry(_ index: Int, _ result: Int32) -> Bool {
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
    private func wake(_ index: Int) {
        guard index < slots.count, slots[index].state == .resting else { return }
        slots[index].state = .active
        issue(index)
    }

    // MARK: submission

    private func issue(_ index: Int, pollFirst: Bool = false) {
        let slot = slots[index]
        if slot.operation == .splice {
            // io_uring runs splice in a worker that gives up at once on non-blocking descriptors,
            // so it waits behind polls: the socket for its direction, then the pipe for room or
            // data (which epoll leaves to the caller; here a full pipe waits instead of spinning).
            reserve(3)
            let fromSocket = slot.fd == slot.source
            let pipe = fromSocket ? slot.destination : slot.source
            linkPoll(slot.fd, fromSocket ? POLLIN : POLLOUT, index, Self.firstPollPart)
            linkPoll(pipe, fromSocket ? POLLOUT : POLLIN, index, Self.secondPollPart)
            slots[index].links = 2
            let sqe = io_uring_get_sqe(ring)!
            let flags = pf_splice_move | pf_splice_nonblock
            io_uring_prep_splice(sqe, slot.source, -1, slot.destination, -1, UInt32(clamping: slot.count), flags)
            io_uring_sqe_set_data64(sqe, userData(index, Self.operationPart))
            return
        }
        reserve(pollFirst ? 2 : 1)
        if pollFirst {
            let writes = slot.operation == .write || slot.operation == .writev || slot.operation == .connect
            linkPoll(slot.fd, writes ? POLLOUT : POLLIN, index, Self.firstPollPart)
        }
        slots[index].links = pollFirst ? 1 : 0
        let sqe = io_uring_get_sqe(ring)!
        // Offset -1: the file position, as read(2) and write(2) use (ignored by sockets and pipes).
        let current = UInt64.max
        switch slot.operation {
        case .accept:
            io_uring_prep_multishot_accept(sqe, slot.fd, nil, nil, pf_accept_flags)
        case .connect:
            let address = UnsafeRawPointer(addressStorage(index)).assumingMemoryBound(to: sockaddr.self)
            io_uring_prep_connect(sqe, slot.fd, address, socklen_t(slot.count))
        case .receive:
            io_uring_prep_read(sqe, slot.fd, nil, UInt32(buffers.bufferSize), current)
            sqe.pointee.flags |= UInt8(pf_iosqe_buffer_select)
            sqe.pointee.buf_group = Self.bufferGroup
        case .read:
            io_uring_prep_read(sqe, slot.fd, slot.pointer, UInt32(clamping: slot.count), current)
        case .write:
            io_uring_prep_write(sqe, slot.fd, slot.pointer, UInt32(clamping: slot.count), current)
        case .writev:
            io_uring_prep_writev(sqe, slot.fd, slot.pointer!.assumingMemoryBound(to: iovec.self), UInt32(clamping: slot.count), current)
        case .poll:
            io_uring_prep_poll_add(sqe, slot.fd, UInt32(POLLIN))
        case .splice, .timer:
            io_uring_prep_nop(sqe)
        }
        io_uring_sqe_set_data64(sqe, userData(index, Self.operationPart))
    }

    /// A one-shot poll linked to the next SQE; it posts a completion only if it fails.
    private func linkPoll(_ fd: FileDescriptor, _ events: Int32, _ index: Int, _ part: UInt64) {
        let sqe = io_uring_get_sqe(ring)!
        io_uring_prep_poll_add(sqe, fd, UInt32(events))
        sqe.pointee.flags |= UInt8(pf_iosqe_io_link | pf_iosqe_cqe_skip_success)
        io_uring_sqe_set_data64(sqe, userData(index, part))
    }

    /// One cancellation per SQE the operation may have in the kernel; the ones that find
    /// nothing answer -ENOENT, which is ignored like every answer to the reactor's own requests.
    private func cancel(_ index: Int) {
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
                let sqe = io_uring_get_sqe(ring)!
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

    /// Before the first submission nothing has reached the kernel: the operation's SQEs are
    /// still in the queue and become no-ops that post nothing. (Submitting them to cancel them
    /// would make the closing thread the ring's owner.)
    private func withdraw(_ index: Int) {
        let queue = ring.pointee.sq
        let operation = userData(index, Self.operationPart)
        var position = queue.sqe_head
        while position != queue.sqe_tail {
            let sqe = queue.sqes + Int(position & queue.ring_mask)
            position &+= 1
            let data = sqe.pointee.user_data
            guard data >> 62 != 3, data & ~(3 << 62) == operation else { continue }
            io_uring_prep_nop(sqe)
            sqe.pointee.flags = UInt8(pf_iosqe_cqe_skip_success)
            io_uring_sqe_set_data64(sqe, Self.internalData)
        }
    }

    /// Makes room for `count` SQEs that must go in together (a linked chain must not be split
    /// by a submission).
    private func reserve(_ count: UInt32) {
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

    /// The first submission makes the calling thread the ring's only issuer.
    private func enable() -> Bool {
        if enabled { return true }
        if startsDisabled {
            let result = pf_io_uring_enable_rings(ring)
            if result < 0 {
                record(result, "io_uring_enable_rings")
                return false
            }
            // Registered for this thread, which is the only one allowed to enter the ring anyway.
            _ = io_uring_register_ring_fd(ring)
        }
        enabled = true
        return true
    }

    private func record(_ result: Int32, _ call: String) {
        if result >= 0 || failure != nil { return }
        switch -result {
        case EINTR, EAGAIN, EBUSY: return
        default: failure = SystemError(call, errno: -result)
        }
    }

    private func takeFailure() -> SystemError? {
        defer { failure = nil }
        return failure
    }

    @inline(__always)
    private func userData(_ index: Int, _ part: UInt64) -> UInt64 {
        part << 62 | UInt64(slots[index].generation & Self.generationMask) << 32 | UInt64(index)
    }

    // MARK: provided buffers

    /// Puts buffer id `bid` (with the pool buffer now behind it) back in the ring; the kernel
    /// sees it after `publishBuffers`.
    @inline(__always)
    private func offer(_ bid: Int) {
        io_uring_buf_ring_add(bufferRing, buffers.pointer(ringBuffers[bid]), UInt32(buffers.bufferSize), UInt16(bid),
                              io_uring_buf_ring_mask(UInt32(Self.bufferRingEntries)), buffersToPublish)
        buffersToPublish += 1
    }

    private func recycle(_ flags: UInt32) { offer(Int(flags >> pf_ioring_cqe_buffer_shift)) }

    private func publishBuffers() {
        if buffersToPublish == 0 { return }
        io_uring_buf_ring_advance(bufferRing, buffersToPublish)
        buffersToPublish = 0
    }

    // MARK: slots

    private func claim(_ operation: Operation, _ fd: FileDescriptor, _ handler: CompletionHandler, _ tag: UInt32) -> Int {
        if freeHead < 0 { grow() }
        let index = Int(freeHead)
        freeHead = slots[index].next
        slots[index].handler = handler
        slots[index].state = .active
        slots[index].operation = operation
        slots[index].tag = tag
        slots[index].fd = fd
        slots[index].links = 0
        slots[index].linkError = 0
        live += 1
        list(index)
        return index
    }

    private func release(_ index: Int) {
        unlist(index)
        slots[index].handler = nil
        slots[index].pointer = nil
        slots[index].state = .free
        slots[index].generation &+= 1
        slots[index].next = freeHead
        freeHead = Int32(index)
        live -= 1
    }

    private func grow() {
        let first = slots.count
        let added = max(first, 1024)
        slots.append(contentsOf: repeatElement(Slot(), count: added))
        for index in stride(from: first + added - 1, through: first, by: -1) {
            slots[index].next = freeHead
            freeHead = Int32(index)
        }
    }

    private func list(_ index: Int) {
        let fd = Int(slots[index].fd)
        guard fd >= 0 else { return }
        if fd >= fdHeads.count {
            fdHeads.append(contentsOf: repeatElement(-1, count: max(fd + 1 - fdHeads.count, fdHeads.count, 1024)))
        }
        let head = fdHeads[fd]
        slots[index].previous = -1
        slots[index].next = head
        if head >= 0 { slots[Int(head)].previous = Int32(index) }
        fdHeads[fd] = Int32(index)
        slots[index].listed = true
    }

    private func unlist(_ index: Int) {
        guard slots[index].listed else { return }
        slots[index].listed = false
        let previous = slots[index].previous, next = slots[index].next
        if previous >= 0 { slots[Int(previous)].next = next } else { fdHeads[Int(slots[index].fd)] = next }
        if next >= 0 { slots[Int(next)].previous = previous }
        slots[index].next = -1
        slots[index].previous = -1
    }

    private func addressStorage(_ index: Int) -> UnsafeMutablePointer<sockaddr_storage> {
        let chunk = index / Self.addressesPerChunk
        while addressChunks.count <= chunk {
            let storage = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: Self.addressesPerChunk)
            storage.initialize(repeating: sockaddr_storage(), count: Self.addressesPerChunk)
            addressChunks.append(storage)
        }
        return addressChunks[chunk] + index % Self.addressesPerChunk
    }

    /// Requests still in the kernel may write into memory their handlers own: cancel them all
    /// and wait (briefly) for the kernel to let go before the ring is torn down.
    private func cancelEverything() {
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
        let sqe = io_uring_get_sqe(ring)!
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

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
    static let bufferGroup: UInt16 = 0
    static let submissionEntries: UInt32 = 1024
    static let completionEntries: UInt32 = 8192

    let ring: UnsafeMutablePointer<io_uring>
    let startsDisabled: Bool
    var enabled = false
    /// The SQEs handed out before the first submission, which `withdraw` may still rewrite.
    var unsubmitted: [UnsafeMutablePointer<io_uring_sqe>] = []
    let core = LoopCore()
    var slots: [Slot] = []
    var freeHead: Int32 = -1
    var fdHeads: [Int32] = []
    /// Slots not free: when none are left the kernel holds nothing of ours.
    var live = 0
    let completions: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    let completionBatch = 256
    var reaping = false
    /// A submission failure seen where nothing can throw; `run()` throws it.
    var failure: SystemError?

    let bufferRing: UnsafeMutablePointer<io_uring_buf_ring>
    let bufferRingBytes: Int
    /// The pool buffer behind each buffer id of the ring.
    var ringBuffers: [BufferID]
    var buffersToPublish: Int32 = 0

    /// The callbacks of `close(fd, quiet:)` whose cancelled requests have not all completed, and
    /// the free entries among them (linked through `nextFree`).
    var quiets: [Quiet] = []
    var freeQuiet: Int32 = -1

    /// Connect addresses, kept until the kernel has read them; in chunks so they never move.
    var addressChunks: [UnsafeMutablePointer<sockaddr_storage>] = []
    static let addressesPerChunk = 64

    lazy var acceptRest = AcceptRest { [unowned self] in wake(Int($0)) }

    /// The set-up flags the kernel accepted.
    let setupFlags: UInt32

    public convenience init(bufferSize: Int = BufferPool.defaultBufferSize) throws {
        try self.init(bufferSize: bufferSize, setups: Self.setups)
    }

    /// Tries `setups` in turn, moving on only when the kernel refuses flags it does not know.
    @_spi(Testing) public init(bufferSize: Int, setups: [UInt32]) throws {
        let (ring, chosen) = try Self.makeRing(setups)
        let memory: UnsafeMutableRawPointer, bytes: Int
        do {
            (memory, bytes) = try Self.registerBufferRing(ring)
        } catch {
            io_uring_queue_exit(ring)
            ring.deallocate()
            throw error
        }
        let entries = Self.bufferRingEntries

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

    // MARK: operations

    public func accept(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.accept(fd), handler, tag))
    }

    public func connect(_ fd: FileDescriptor, address: SocketAddress, handler: CompletionHandler, tag: UInt32) {
        let index = claim(.connect(fd, addressLength: address.length), handler, tag)
        let storage = addressStorage(index)
        address.withSockaddr { pointer, length in
            UnsafeMutableRawPointer(storage).copyMemory(from: pointer, byteCount: Int(length))
        }
        issue(index)
    }

    public func receive(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.receive(fd), handler, tag))
    }

    public func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.read(fd, into: buffer, count: count), handler, tag))
    }

    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.write(fd, from: buffer, count: count), handler, tag))
    }

    public func writev(_ fd: FileDescriptor, vectors: UnsafePointer<iovec>, count: Int, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.writev(fd, vectors: vectors, count: count), handler, tag))
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
        issue(claim(.splice(from: source, to: destination, count: count, socket: socket), handler, tag))
    }

    public func pollReadable(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        issue(claim(.poll(fd), handler, tag))
    }

    public func timer(nanoseconds: UInt64, handler: CompletionHandler, tag: UInt32) -> TimerID {
        core.timers.add(after: nanoseconds, handler: handler, tag: tag)
    }

    public func cancelTimer(_ id: TimerID) { core.timers.cancel(id) }

    public func close(_ fd: FileDescriptor) { close(fd, quietEntry: -1) }

    /// `quiet` runs inside `close` when nothing issued on `fd` is in the kernel (never
    /// submitted, or an accept resting between tries); otherwise from the loop, with the
    /// completions of the turn that reaps the last completion of the requests `close` cancelled
    /// (their slots are kept until then, which is the hook). A reactor torn down first drops it.
    public func close(_ fd: FileDescriptor, quiet: @escaping () -> Void) {
        let entry = claimQuiet(quiet)
        close(fd, quietEntry: entry)
        if quiets[Int(entry)].waiting == 0 {
            releaseQuiet(entry)
            quiet()
        }
    }

    /// Cancels what `fd` has pending; the cancelled slots that stay until their last completion
    /// are counted in quiet entry `quietEntry` (-1: nobody waits for them).
    private func close(_ fd: FileDescriptor, quietEntry: Int32) {
        guard fd >= 0 else { return }
        if Int(fd) < fdHeads.count {
            var next = fdHeads[Int(fd)]
            while next >= 0 {
                let index = Int(next)
                next = slots[index].next
                cancel(index)
                if quietEntry >= 0 && slots[index].state == .cancelled {
                    slots[index].quiet = quietEntry
                    quiets[Int(quietEntry)].waiting += 1
                }
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

    public func spliceNow(from source: FileDescriptor, to destination: FileDescriptor, count: Int) -> Int {
        let moved = pf_splice(source, destination, count, pf_splice_move | pf_splice_nonblock)
        return moved >= 0 ? moved : -Int(pf_errno())
    }

    public func schedule(_ task: DeferredTask) { core.addDeferred(task) }

    public func stop() { core.stopped = true }

}

import CLinuxShim
import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The slot table: one slot per operation from its issue to its last completion, found by index
/// (the `user_data` of its SQEs) and, while in use, in a list per descriptor for `close`.
extension UringReactor {
    enum State: UInt8 {
        case free
        /// In the kernel; its completion goes to the handler.
        case active
        /// Cancelled by `close`: its completions are swallowed, and the slot (with its handler)
        /// is kept until the last of them has arrived.
        case cancelled
        /// A multishot accept waiting for `LoopCore.acceptRestNanoseconds` after a resource error.
        case resting
    }

    struct Slot {
        var handler: CompletionHandler?
        var state = State.free
        /// Kept after release until the slot is claimed again: a free slot is found by `state`.
        var request = Request.poll(-1)
        var tag: UInt32 = 0
        var generation: UInt32 = 0
        /// Polls linked in front of the operation in its current submission (0, 1 or 2).
        var links: UInt8 = 0
        /// The error of a failed poll in front, reported instead of the operation's -ECANCELED.
        var linkError: Int32 = 0
        var restTimer: TimerID = 0
        /// The entry in `quiets` waiting for this cancelled slot's last completion (-1: none).
        var quiet: Int32 = -1
        /// Linked through `next`: the free list while free, the slots of its descriptor while in use.
        var listed = false
        var next: Int32 = -1
        var previous: Int32 = -1
    }

    /// One `close(fd, quiet:)` waiting for the requests it cancelled.
    struct Quiet {
        var callback: (() -> Void)?
        /// Cancelled slots whose last completion has not arrived.
        var waiting = 0
        var nextFree: Int32 = -1
    }

    // user_data: part (2 bits) | generation (30 bits) | slot index (32 bits). Part 0 is the
    // operation, 1 and 2 the polls linked in front of it, 3 the reactor's own requests.
    static let generationMask: UInt32 = 0x3FFF_FFFF
    static let operationPart: UInt64 = 0
    static let firstPollPart: UInt64 = 1
    static let secondPollPart: UInt64 = 2
    static let internalData: UInt64 = 3 << 62

    @inline(__always)
    func userData(_ index: Int, _ part: UInt64) -> UInt64 {
        part << 62 | UInt64(slots[index].generation & Self.generationMask) << 32 | UInt64(index)
    }

    func claim(_ request: Request, _ handler: CompletionHandler, _ tag: UInt32) -> Int {
        if freeHead < 0 { grow() }
        let index = Int(freeHead)
        freeHead = slots[index].next
        slots[index].handler = handler
        slots[index].state = .active
        slots[index].request = request
        slots[index].tag = tag
        slots[index].links = 0
        slots[index].linkError = 0
        live += 1
        list(index)
        return index
    }

    func release(_ index: Int) {
        unlist(index)
        if slots[index].quiet >= 0 {
            settleQuiet(slots[index].quiet)
            slots[index].quiet = -1
        }
        slots[index].handler = nil
        slots[index].state = .free
        slots[index].generation &+= 1
        slots[index].next = freeHead
        freeHead = Int32(index)
        live -= 1
    }

    func claimQuiet(_ callback: @escaping () -> Void) -> Int32 {
        if freeQuiet < 0 {
            quiets.append(Quiet())
            freeQuiet = Int32(quiets.count - 1)
        }
        let entry = freeQuiet
        freeQuiet = quiets[Int(entry)].nextFree
        quiets[Int(entry)] = Quiet(callback: callback)
        return entry
    }

    func releaseQuiet(_ entry: Int32) {
        quiets[Int(entry)] = Quiet(nextFree: freeQuiet)
        freeQuiet = entry
    }

    /// One of the entry's cancelled slots has had its last completion; after the last of them,
    /// the callback runs with the completions of this turn, in the loop and not inside `reap`.
    func settleQuiet(_ entry: Int32) {
        quiets[Int(entry)].waiting -= 1
        guard quiets[Int(entry)].waiting == 0, let callback = quiets[Int(entry)].callback else { return }
        releaseQuiet(entry)
        core.post(callback)
    }

    func grow() {
        let first = slots.count
        let added = max(first, 1024)
        slots.append(contentsOf: repeatElement(Slot(), count: added))
        for index in stride(from: first + added - 1, through: first, by: -1) {
            slots[index].next = freeHead
            freeHead = Int32(index)
        }
    }

    func list(_ index: Int) {
        let fd = Int(slots[index].request.descriptor)
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

    func unlist(_ index: Int) {
        guard slots[index].listed else { return }
        slots[index].listed = false
        let previous = slots[index].previous, next = slots[index].next
        if previous >= 0 { slots[Int(previous)].next = next } else { fdHeads[Int(slots[index].request.descriptor)] = next }
        if next >= 0 { slots[Int(next)].previous = previous }
        slots[index].next = -1
        slots[index].previous = -1
    }

    func addressStorage(_ index: Int) -> UnsafeMutablePointer<sockaddr_storage> {
        let chunk = index / Self.addressesPerChunk
        while addressChunks.count <= chunk {
            let storage = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: Self.addressesPerChunk)
            storage.initialize(repeating: sockaddr_storage(), count: Self.addressesPerChunk)
            addressChunks.append(storage)
        }
        return addressChunks[chunk] + index % Self.addressesPerChunk
    }
}

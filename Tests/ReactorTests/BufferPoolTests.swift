import Testing
@testable import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// `trim` checked page by page with mincore(2), which answers for this mapping alone (the
/// process's RSS would count the tests running alongside).
@Suite struct BufferPoolTests {
    static let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Per page of `count` bytes at `start` (page-aligned), whether it is resident.
    static func residency(_ start: UnsafeMutableRawPointer, _ count: Int) -> [Bool] {
        var vector = [UInt8](repeating: 0, count: (count + page - 1) / page)
        let result = mincore(start, count, &vector)
        precondition(result == 0, "mincore: errno \(errno)")
        return vector.map { $0 & 1 != 0 }
    }

    static func resident(_ pool: BufferPool, _ id: BufferID) -> Bool {
        residency(pool.pointer(id), pool.bufferSize).allSatisfy { $0 }
    }

    static func gone(_ pool: BufferPool, _ id: BufferID) -> Bool {
        residency(pool.pointer(id), pool.bufferSize).allSatisfy { !$0 }
    }

    @Test func trimGivesBackFreeBuffersButTheWarmOnes() throws {
        let pool = BufferPool(bufferSize: 64 * 1024)
        let size = pool.bufferSize
        // More than one slab, so a run of buffers must not cross into the next slab's mapping.
        let count = BufferPool.buffersPerSlab + 72, keepWarm = 8
        let ids = (0..<count).map { _ in pool.take() }
        for id in ids { memset(pool.pointer(id), 0x5A, size) }
        // Released out of order, as streams finish.
        for step in 0..<count { pool.release(ids[step * 37 % count]) }
        let held = pool.take()
        memset(pool.pointer(held), 0x77, size)

        let given = pool.trim(keepWarm: keepWarm)

        let free = ids.filter { $0 != held }.sorted()
        let warm = Array(free.prefix(keepWarm)), cold = Array(free.dropFirst(keepWarm))
        #expect(given == cold.count * size)
        #expect(warm.allSatisfy { Self.resident(pool, $0) }, "the warm buffers stay resident")
        #expect(cold.allSatisfy { Self.gone(pool, $0) }, "the trimmed buffers are no longer resident")
        #expect(Self.resident(pool, held), "a buffer in use is left alone")
        let heldBytes = UnsafeRawBufferPointer(start: pool.pointer(held), count: size)
        #expect(heldBytes.allSatisfy { $0 == 0x77 })

        #expect(pool.trim(keepWarm: keepWarm) == 0, "nothing more to give back")

        // The warm ones go out first, lowest first; then a trimmed one, which reads as zeros.
        let taken = (0...keepWarm).map { _ in pool.take() }
        #expect(Array(taken.prefix(keepWarm)) == warm)
        let refaulted = taken[keepWarm]
        #expect(refaulted == cold.first)
        #expect(UnsafeRawBufferPointer(start: pool.pointer(refaulted), count: size).allSatisfy { $0 == 0 })
        memset(pool.pointer(refaulted), 0x33, size)
        for id in taken { pool.release(id) }
        #expect(pool.trim(keepWarm: keepWarm) == size, "only the buffer taken past the warm ones is trimmed again")
        #expect(Self.gone(pool, refaulted))
        pool.release(held)
        #expect(pool.inUse == 0)
    }

    // MARK: holders

    @Test func aBufferGoesBackWhenItsLastHolderReleasesIt() {
        let pool = BufferPool(bufferSize: 4096)
        let shared = pool.take()
        pool.retain(shared)
        pool.retain(shared)
        #expect(pool.inUse == 1, "one buffer, however many holders")
        pool.release(shared)
        pool.release(shared)
        #expect(pool.inUse == 1)
        let other = pool.take()
        #expect(other != shared, "a buffer with a holder left is not handed out again")
        pool.release(shared)
        #expect(pool.inUse == 1)
        #expect(pool.take() == shared, "the last release put it on the free list, next to go out")
        pool.release(shared)
        pool.release(other)
        #expect(pool.inUse == 0)
    }

    @Test func buffersComeInSlabsAndKeepTheirAddresses() {
        let pool = BufferPool(bufferSize: 4096)
        #expect(pool.capacity == 0, "nothing mapped before the first take")
        let ids = (0...BufferPool.buffersPerSlab).map { _ in pool.take() }
        #expect(pool.capacity == 2 * BufferPool.buffersPerSlab)
        #expect(Set(ids).count == ids.count)
        let addresses = ids.map { pool.pointer($0) }
        for id in ids { pool.release(id) }
        #expect(pool.inUse == 0)
        #expect(ids.map { pool.pointer($0) } == addresses)
        // The free list is a stack: the buffer released last, the warmest, goes out first.
        #expect(pool.take() == ids.last)
    }

    /// A buffer released by one holder but kept by another is in use: trim leaves it alone.
    @Test func trimLeavesABufferThatStillHasAHolder() {
        let pool = BufferPool(bufferSize: 4 * Self.page)
        let shared = pool.take(), lone = pool.take()
        pool.retain(shared)
        memset(pool.pointer(shared), 0x42, pool.bufferSize)
        memset(pool.pointer(lone), 0x17, pool.bufferSize)
        pool.release(shared)
        pool.release(lone)

        #expect(pool.trim(keepWarm: 0) == pool.bufferSize, "only the buffer nobody holds is given back")
        #expect(Self.resident(pool, shared))
        #expect(UnsafeRawBufferPointer(start: pool.pointer(shared), count: pool.bufferSize).allSatisfy { $0 == 0x42 })
        #expect(Self.gone(pool, lone))
        pool.release(shared)
        #expect(pool.inUse == 0)
    }

    /// With buffers that are not a whole number of pages, a page shared with a buffer in use
    /// keeps its bytes.
    @Test func trimKeepsPagesSharedWithBuffersInUse() throws {
        let size = 2 * Self.page + Self.page / 2
        let pool = BufferPool(bufferSize: size)
        let count = 64
        let ids = (0..<count).map { _ in pool.take() }
        for id in ids { memset(pool.pointer(id), Int32(id % 200 + 1), size) }
        let released = ids.filter { $0 % 2 == 1 }
        for id in released { pool.release(id) }

        let given = pool.trim(keepWarm: 0)

        // Every odd buffer holds one whole page of its own, at least.
        #expect(given >= released.count * Self.page && given <= released.count * size)
        #expect(given % Self.page == 0)
        for id in ids where id % 2 == 0 {
            let bytes = UnsafeRawBufferPointer(start: pool.pointer(id), count: size)
            #expect(bytes.allSatisfy { $0 == UInt8(id % 200 + 1) }, "buffer \(id) in use kept its bytes")
        }
    }
}

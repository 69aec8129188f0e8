import Testing
@testable import Reactor

/// LoopCore's timers, with the clock in the test's hands: deadlines are given, and `popDue` is
/// asked at a chosen time.
@Suite struct TimerHeapTests {
    let handler = Recorder()

    /// Pops everything due at `now`: (tag, deadline) in the order the heap gives them.
    func popAll(_ timers: inout TimerHeap, now: UInt64) -> [(tag: UInt32, deadline: UInt64)] {
        var popped: [(UInt32, UInt64)] = []
        while let entry = timers.popDue(now: now) { popped.append((entry.tag, entry.deadline)) }
        return popped
    }

    @Test func firesInDeadlineOrderAndNotBefore() {
        var timers = TimerHeap()
        for deadline: UInt64 in [500, 100, 300, 200, 400] {
            _ = timers.add(at: deadline, handler: handler, tag: UInt32(deadline))
        }
        let first = timers.nextDeadline
        #expect(first == 100)
        let early = timers.popDue(now: 99)
        #expect(early == nil)
        #expect(popAll(&timers, now: 300).map(\.tag) == [100, 200, 300])
        let afterThree = timers.nextDeadline
        #expect(afterThree == 400)
        #expect(popAll(&timers, now: .max).map(\.tag) == [400, 500])
        let afterAll = timers.nextDeadline
        #expect(afterAll == nil)
    }

    @Test func aCancelledTimerIsNeverDue() {
        var timers = TimerHeap()
        let first = timers.add(at: 100, handler: handler, tag: 1)
        _ = timers.add(at: 200, handler: handler, tag: 2)
        let middle = timers.add(at: 300, handler: handler, tag: 3)
        _ = timers.add(at: 400, handler: handler, tag: 4)
        timers.cancel(first)
        timers.cancel(middle)
        let top = timers.nextDeadline
        #expect(top == 200, "a cancelled timer at the top is skipped")
        #expect(popAll(&timers, now: .max).map(\.tag) == [2, 4])
        // Cancelling again, or an id that never was, changes nothing.
        timers.cancel(first)
        timers.cancel(12345)
        let remaining = timers.nextDeadline
        #expect(remaining == nil)
    }

    /// Due and posted, then cancelled before delivery (by a handler earlier in the same turn):
    /// `deliver` says no, once; the others are delivered.
    @Test func aTimerCancelledAfterFallingDueIsNotDelivered() {
        var timers = TimerHeap()
        let kept = timers.add(at: 100, handler: handler, tag: 1)
        let revoked = timers.add(at: 100, handler: handler, tag: 2)
        let popped = popAll(&timers, now: 100)
        #expect(Set(popped.map(\.tag)) == [1, 2])
        timers.cancel(revoked)
        let keptDelivered = timers.deliver(kept)
        #expect(keptDelivered)
        let revokedDelivered = timers.deliver(revoked)
        #expect(!revokedDelivered)
        // Delivered or revoked, a timer is forgotten: a late cancel does not touch a new timer.
        timers.cancel(kept)
        let next = timers.add(at: 200, handler: handler, tag: 3)
        #expect(next != kept && next != revoked)
        #expect(popAll(&timers, now: 200).map(\.tag) == [3])
        let nextDelivered = timers.deliver(next)
        #expect(nextDelivered)
    }

    @Test func timersWithTheSameDeadlineAllFire() {
        var timers = TimerHeap()
        let ids = (0..<5).map { timers.add(at: 700, handler: handler, tag: UInt32($0)) }
        #expect(Set(ids).count == 5, "each has an id of its own")
        timers.cancel(ids[2])
        #expect(popAll(&timers, now: 699).isEmpty)
        let popped = popAll(&timers, now: 700)
        #expect(popped.map(\.tag).sorted() == [0, 1, 3, 4])
        #expect(popped.allSatisfy { $0.deadline == 700 })
    }

    /// Thousands of timers in a scrambled order, a seventh of them cancelled, popped in steps of
    /// time: each step gives exactly the live timers due by then, in deadline order.
    @Test func manyTimers() {
        var timers = TimerHeap()
        let count = 10_000
        var expected: [(tag: UInt32, deadline: UInt64)] = []
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for index in 0..<count {
            // xorshift: deterministic, with repeats among the deadlines.
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            let deadline = 1 + state % 5000
            let id = timers.add(at: deadline, handler: handler, tag: UInt32(index))
            if index % 7 == 3 { timers.cancel(id) } else { expected.append((UInt32(index), deadline)) }
        }
        var popped: [(tag: UInt32, deadline: UInt64)] = []
        for now in stride(from: UInt64(0), through: 5000, by: 250) {
            let step = popAll(&timers, now: now)
            #expect(step.allSatisfy { $0.deadline <= now })
            popped += step
        }
        let remaining = timers.nextDeadline
        #expect(remaining == nil)
        #expect(popped.count == expected.count)
        #expect(zip(popped, popped.dropFirst()).allSatisfy { $0.deadline <= $1.deadline })
        #expect(Set(popped.map(\.tag)) == Set(expected.map(\.tag)))
    }
}

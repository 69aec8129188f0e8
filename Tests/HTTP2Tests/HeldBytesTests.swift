import Testing
@testable import HTTP2

@Suite("HeldBytes: the bound on what a connection holds")
struct HeldBytesTests {
    @Test("Over the limit it says so; falling back under it wakes each waiter once, and the owner")
    func wakesOnce() {
        let held = HeldBytes(limit: 100)
        var owner = 0, first = 0, second = 0
        held.onBelowLimit = { owner += 1 }
        held.add(60)
        #expect(!held.isOver)
        held.add(40)
        #expect(held.isOver)
        held.wait { first += 1 }
        held.wait { second += 1 }
        held.remove(10)
        #expect(!held.isOver && held.count == 90)
        #expect(owner == 1 && first == 1 && second == 1)
        // Below the limit already: no more wake-ups.
        held.remove(50)
        #expect(owner == 1 && first == 1 && second == 1)
        #expect(held.count == 40)
    }

    @Test("A waiter added while under the limit waits for the next time it is reached and left")
    func waitsForNextTime() {
        let held = HeldBytes(limit: 10)
        var woken = 0
        held.wait { woken += 1 }
        held.add(5)
        held.remove(5)
        #expect(woken == 0)
        held.add(10)
        held.remove(1)
        #expect(woken == 1)
    }
}

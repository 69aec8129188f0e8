import Testing
@testable import PortForward
@testable import Reactor

/// An event of a tunnel's life, as a test writes it. Arrivals are `arriving` followed by what the
/// executor does when the bytes are kept (queue a chunk, or extend the spliced one).
enum TunnelEvent: Sendable {
    case attach, noRoom, room, readable, pipe(Int32?), read(Int, buffer: UInt32), nothing, failed
    case written(Int), pending(limit: Int), take(Int), sent(Int), dropped(Int), refill(Refill)
    case arrive(Int, buffer: UInt32), arrivePipe(Int, pipe: Int32), arriveMore(Int), text(String)
    case peerEnded, responded(Int), refused, closed(UInt32), abort, lost, acceptsSplice, unwindowed
    /// Bridged (a gateway): join; the partner lends a buffer chunk or a pipe chunk; its end.
    case bridge(partnerTakesPipes: Bool), lend(Int, buffer: UInt32, start: Int), lendPipe(Int, pipe: Int32), lenderEnded
}

struct TunnelScenario: Sendable, CustomTestStringConvertible {
    var name: String
    var splice = false
    /// `TunnelState.bufferedReadsBelow` (0: always splice in splice mode).
    var smallReads = 0
    var steps: [(TunnelEvent, [String])]
    var testDescription: String { name }
}

private func pipe(_ fd: Int32) -> Pipe { Pipe(read: fd, write: fd + 1) }

/// What `event` makes the state do: its actions, or the answer of a query.
private func apply(_ event: TunnelEvent, _ state: inout TunnelState) -> [String] {
    var out: [TunnelAction] = []
    var said: [String] = []
    switch event {
    case .attach: state.attach(&out)
    case .noRoom: state.noRoom(&out)
    case .room: state.roomAvailable(&out)
    case .readable: state.readable(&out)
    case .pipe(let fd): state.pipeTaken(fd.map(pipe), &out)
    case .read(let count, let buffer): state.read(count, into: buffer, &out)
    case .nothing: state.readFoundNothing(&out)
    case .failed: state.socketFailed(&out)
    case .written(let count): state.written(count, &out)
    case .pending(let limit):
        let (count, ends) = state.pending(limit: limit)
        return ["pending(\(count),\(ends))"]
    case .take(let count): return ["\(state.take(count))"]
    case .sent(let count): state.payloadSent(count, &out)
    case .dropped(let count): state.payloadDropped(count, &out)
    case .refill(let result): state.refilled(result, &out)
    case .arrive(let count, let buffer):
        if state.arriving(count, &out) {
            state.queued(Chunk(buffer: buffer, start: 0, end: count), &out)
        } else {
            said.append("dropped")
        }
    case .arrivePipe(let count, let fd):
        if state.arriving(count, &out) {
            state.queued(Chunk(buffer: BufferPool.none, start: 0, end: count, pipe: pipe(fd)), &out)
        } else {
            said.append("dropped")
        }
    case .arriveMore(let count):
        if state.arriving(count, &out) { state.splicedMore(count, &out) } else { said.append("dropped") }
    case .text(let text):
        Array(text.utf8).withUnsafeBytes { state.rejectionText($0) }
    case .peerEnded: state.peerEnded(&out)
    case .responded(let status): state.responded(status: status, &out)
    case .refused: state.refused(&out)
    case .closed(let code): state.streamClosed(errorCode: code, &out)
    case .abort: state.abort(&out)
    case .lost: state.connectionLost(&out)
    case .acceptsSplice: return ["\(state.acceptsSplice)"]
    case .unwindowed: state.windowed = false
    case .bridge(let takesPipes):
        state.bridged = true
        state.partnerTakesPipes = takesPipes
    case .lend(let count, let buffer, let start): state.lent(Chunk(buffer: buffer, start: start, end: start + count), &out)
    case .lendPipe(let count, let fd): state.lent(Chunk(buffer: BufferPool.none, start: 0, end: count, pipe: pipe(fd)), &out)
    case .lenderEnded: state.lenderEnded(&out)
    }
    return out.map(\.description) + said
}

@Suite("TunnelState: a stream's life as a value, events in, actions out")
struct TunnelStateTests {
    static let scenarios: [TunnelScenario] = [
        TunnelScenario(name: "bridged: a lent chunk is sent from where it lies and given back when it has left", splice: true, steps: [
            (.bridge(partnerTakesPipes: true), []),
            (.attach, ["receive"]),
            (.lend(100, buffer: 4, start: 30), ["hold(100)", "resume"]),
            (.take(60), ["buffer(b4+30)"]),
            (.take(40), ["buffer(b4+90)"]),
            (.sent(60), []),
            (.sent(40), ["unhold(100)", "giveBack(100)", "receive"]),
            (.lendPipe(500, pipe: 3), ["hold(500)", "resume"]),
            (.take(500), ["pipe(p3)"]),
            // Never refilled, never given to the pool: the pipe is the partner's.
            (.sent(500), ["unhold(500)", "giveBack(500)", "receive"]),
            (.lenderEnded, ["resume"]),
            (.pending(limit: 100), ["pending(0,true)"]),
        ]),
        TunnelScenario(name: "bridged: a lent chunk whose frames are dropped goes back incomplete", steps: [
            (.bridge(partnerTakesPipes: true), []), (.attach, ["receive"]),
            (.lend(10, buffer: 4, start: 0), ["hold(10)", "resume"]),
            (.take(10), ["buffer(b4+0)"]),
            (.lost, ["resetSocket", "close[]", "finished"]),
            (.dropped(10), ["unhold(10)", "giveBack(10,incomplete)"]),
        ]),
        TunnelScenario(name: "bridged: aborted with a lent chunk not taken, it goes back at once; a late lend too", steps: [
            (.bridge(partnerTakesPipes: true), []), (.attach, ["receive"]),
            (.lend(10, buffer: 4, start: 0), ["hold(10)", "resume"]),
            (.abort, ["resetStream", "resetSocket", "close[]", "unhold(10)", "giveBack(0,incomplete)", "finished"]),
            (.lend(5, buffer: 5, start: 0), ["giveBack(0,incomplete)"]),
        ]),
        TunnelScenario(name: "bridged: arriving DATA is not spliced into pipes the partner cannot send", splice: true, steps: [
            (.bridge(partnerTakesPipes: false), []), (.attach, ["receive"]),
            (.acceptsSplice, ["false"]),
        ]),
        TunnelScenario(name: "bridged: what arrives is lent (a write), the shutdown too", splice: true, steps: [
            (.bridge(partnerTakesPipes: true), []), (.attach, ["receive"]),
            (.acceptsSplice, ["true"]),
            (.arrive(100, buffer: 9), ["hold(100)", "write(b9@0+100)"]),
            (.peerEnded, []),
            (.written(100), ["release(b9)", "unhold(100)", "consume(100)", "shutdownWrite"]),
        ]),
        TunnelScenario(name: "buffers: a read goes out whole, then the next read", steps: [
            (.attach, ["receive"]),
            (.read(100, buffer: 1), ["hold(100)", "resume"]),
            (.pending(limit: 64), ["pending(64,false)"]),
            (.take(64), ["buffer(b1+0)"]),
            (.take(36), ["buffer(b1+64)"]),
            (.pending(limit: 64), ["pending(0,false)"]),
            (.sent(64), []),
            (.sent(36), ["unhold(100)", "release(b1)", "receive"]),
        ]),
        TunnelScenario(name: "splice: readable, a pipe, splice in; an emptied pipe is refilled inline", splice: true, steps: [
            (.attach, ["pollReadable"]),
            (.readable, ["takePipe"]),
            (.pipe(3), ["spliceIn(p3)"]),
            (.read(500, buffer: BufferPool.none), ["hold(500)", "resume"]),
            (.take(500), ["pipe(p3)"]),
            (.sent(500), ["unhold(500)", "refill(p3)"]),
            (.refill(.moved(200)), ["hold(200)", "resume"]),
            (.take(200), ["pipe(p3)"]),
            (.sent(200), ["unhold(200)", "refill(p3)"]),
            (.refill(.nothing), ["give(p3)", "pollReadable"]),
        ]),
        TunnelScenario(name: "splice: a refill that finds end of file ends the body", splice: true, steps: [
            (.attach, ["pollReadable"]), (.readable, ["takePipe"]), (.pipe(3), ["spliceIn(p3)"]),
            (.read(10, buffer: BufferPool.none), ["hold(10)", "resume"]), (.take(10), ["pipe(p3)"]),
            (.sent(10), ["unhold(10)", "refill(p3)"]),
            (.refill(.endOfFile), ["give(p3)", "resume"]),
            (.pending(limit: 100), ["pending(0,true)"]),
            (.take(0), ["end"]),
            (.pending(limit: 100), ["pending(0,false)"]),
        ]),
        TunnelScenario(name: "splice: a failed refill resets both ends", splice: true, steps: [
            (.attach, ["pollReadable"]), (.readable, ["takePipe"]), (.pipe(3), ["spliceIn(p3)"]),
            (.read(10, buffer: BufferPool.none), ["hold(10)", "resume"]), (.take(10), ["pipe(p3)"]),
            (.sent(10), ["unhold(10)", "refill(p3)"]),
            (.refill(.failed), ["give(p3)", "resetStream", "resetSocket", "close[]", "finished"]),
        ]),
        TunnelScenario(name: "splice: out of pipes, the chunk goes through a pooled buffer", splice: true, steps: [
            (.attach, ["pollReadable"]), (.readable, ["takePipe"]),
            (.pipe(nil), ["receive"]),
            (.read(10, buffer: 7), ["hold(10)", "resume"]),
            (.take(10), ["buffer(b7+0)"]),
            (.sent(10), ["unhold(10)", "release(b7)", "pollReadable"]),
        ]),
        TunnelScenario(name: "splice: small reads go through pooled buffers until one is large, then pipes for good",
                       splice: true, smallReads: 1000, steps: [
            (.attach, ["receive"]),
            (.read(4, buffer: 7), ["hold(4)", "resume"]),
            (.take(4), ["buffer(b7+0)"]),
            (.sent(4), ["unhold(4)", "release(b7)", "receive"]),
            (.noRoom, ["waitForRoom"]),
            (.room, ["receive"]),
            (.read(2000, buffer: 8), ["hold(2000)", "resume"]),
            (.take(2000), ["buffer(b8+0)"]),
            (.sent(2000), ["unhold(2000)", "release(b8)", "pollReadable"]),
            (.readable, ["takePipe"]), (.pipe(3), ["spliceIn(p3)"]),
            (.read(10, buffer: BufferPool.none), ["hold(10)", "resume"]), (.take(10), ["pipe(p3)"]),
            (.sent(10), ["unhold(10)", "refill(p3)"]),
            (.refill(.nothing), ["give(p3)", "pollReadable"]),
        ]),
        TunnelScenario(name: "splice: nothing there after all (EAGAIN): the pipe goes back", splice: true, steps: [
            (.attach, ["pollReadable"]), (.readable, ["takePipe"]), (.pipe(3), ["spliceIn(p3)"]),
            (.nothing, ["give(p3)", "pollReadable"]),
        ]),
        TunnelScenario(name: "held bytes over the bound: wait for room, then read", steps: [
            (.attach, ["receive"]),
            (.noRoom, ["waitForRoom"]),
            (.room, ["receive"]),
        ]),
        TunnelScenario(name: "FIN in both directions: shut down after the last write, close when the stream closes", steps: [
            (.attach, ["receive"]),
            (.read(0, buffer: BufferPool.none), ["resume"]),
            (.pending(limit: 100), ["pending(0,true)"]),
            (.take(0), ["end"]),
            (.arrive(10, buffer: 5), ["hold(10)", "write(b5@0+10)"]),
            (.peerEnded, []),
            (.written(4), ["unhold(4)", "consume(4)", "write(b5@4+6)"]),
            (.written(6), ["release(b5)", "unhold(6)", "consume(6)", "shutdownWrite"]),
            (.closed(0), ["close[]", "finished"]),
        ]),
        TunnelScenario(name: "the stream closes cleanly while a write is outstanding: close after it", steps: [
            (.attach, ["receive"]),
            (.read(0, buffer: BufferPool.none), ["resume"]), (.take(0), ["end"]),
            (.arrive(10, buffer: 5), ["hold(10)", "write(b5@0+10)"]),
            (.peerEnded, []),
            (.closed(0), []),
            (.written(10), ["release(b5)", "unhold(10)", "consume(10)", "shutdownWrite", "close[]", "finished"]),
        ]),
        TunnelScenario(name: "reset during a write: the buffer goes back only after the close is quiet", steps: [
            (.attach, ["receive"]),
            (.arrive(10, buffer: 5), ["hold(10)", "write(b5@0+10)"]),
            (.arrive(20, buffer: 6), ["hold(20)"]),
            (.closed(8), ["resetSocket", "close[b5,b6]", "unhold(30)", "finished"]),
            (.written(10), []),
            (.arrive(3, buffer: 9), ["consume(3)", "dropped"]),
        ]),
        TunnelScenario(name: "a payload in flight when the tunnel aborts: released when sent", steps: [
            (.attach, ["receive"]),
            (.read(100, buffer: 1), ["hold(100)", "resume"]),
            (.take(60), ["buffer(b1+0)"]),
            (.abort, ["resetStream", "resetSocket", "close[]", "finished"]),
            (.sent(30), []),
            (.sent(30), ["unhold(100)", "release(b1)"]),
            (.read(10, buffer: 2), ["release(b2)"]),
        ]),
        TunnelScenario(name: "the peer resets a stream with a payload in flight: released when dropped", steps: [
            (.attach, ["receive"]),
            (.read(100, buffer: 1), ["hold(100)", "resume"]),
            (.take(100), ["buffer(b1+0)"]),
            (.closed(8), ["resetSocket", "close[]", "finished"]),
            (.dropped(100), ["unhold(100)", "release(b1)"]),
        ]),
        TunnelScenario(name: "connection lost with data queued both ways: what the connection took goes back when it drops it", steps: [
            (.attach, ["receive"]),
            (.read(100, buffer: 1), ["hold(100)", "resume"]),
            (.take(60), ["buffer(b1+0)"]),
            (.arrive(10, buffer: 5), ["hold(10)", "write(b5@0+10)"]),
            (.lost, ["resetSocket", "close[b5]", "unhold(10)", "finished"]),
            // The connection's cancelled write may still read what it took: released when dropped.
            (.dropped(60), ["unhold(100)", "release(b1)"]),
            (.sent(40), []),
        ]),
        TunnelScenario(name: "relay: refused before the pod connected; later bytes are dropped and their window opened", steps: [
            (.arrive(10, buffer: 5), ["hold(10)"]),
            (.refused, ["consume(10)", "unhold(10)", "release(b5)"]),
            (.arrive(5, buffer: 6), ["consume(5)", "dropped"]),
            (.closed(0), ["finished"]),
        ]),
        TunnelScenario(name: "relay: reset while connecting ends the tunnel without a socket", steps: [
            (.closed(8), ["finished"]),
            (.attach, []),
        ]),
        TunnelScenario(name: "relay: an upgraded body (no window) is written once the pod is there", steps: [
            (.unwindowed, []),
            (.arrive(10, buffer: 5), ["hold(10)"]),
            (.peerEnded, []),
            (.attach, ["receive", "write(b5@0+10)"]),
            (.written(10), ["release(b5)", "unhold(10)", "shutdownWrite"]),
        ]),
        TunnelScenario(name: "client: a refusal's body is the reason; the end of it resets the stream", steps: [
            (.attach, ["receive"]),
            (.responded(404), []),
            (.arrive(15, buffer: 5), ["consume(15)", "dropped"]),
            (.text("pod not found\n"), []),
            (.peerEnded, ["rejected(404,pod not found\n)", "resetStream", "resetSocket", "close[]", "finished"]),
            (.peerEnded, []),
        ]),
        TunnelScenario(name: "client: a refusal while a write is in flight keeps that chunk until the write completes", steps: [
            (.attach, ["receive"]),
            (.arrive(10, buffer: 5), ["hold(10)", "write(b5@0+10)"]),
            (.arrive(20, buffer: 6), ["hold(20)"]),
            (.responded(500), ["consume(20)", "unhold(20)", "release(b6)"]),
            (.responded(404), []),
            (.written(10), ["release(b5)", "unhold(10)", "consume(10)"]),
        ]),
        TunnelScenario(name: "spliced payload in two pieces: one chunk, written in order", splice: true, steps: [
            (.attach, ["pollReadable"]),
            (.arrivePipe(100, pipe: 7), ["hold(100)", "splice(p7,100)"]),
            (.arriveMore(50), ["hold(50)"]),
            (.written(100), ["unhold(100)", "consume(100)", "splice(p7,50)"]),
            (.written(50), ["give(p7)", "unhold(50)", "consume(50)"]),
        ]),
        TunnelScenario(name: "a second piece with no spliced chunk to extend is a broken stream", splice: true, steps: [
            (.attach, ["pollReadable"]),
            (.arriveMore(50), ["hold(50)", "unhold(50)", "resetStream", "resetSocket", "close[]", "finished"]),
        ]),
        TunnelScenario(name: "a stream whose socket does not read takes at most two pipes", splice: true, steps: [
            (.acceptsSplice, ["false"]),
            (.attach, ["pollReadable"]),
            (.acceptsSplice, ["true"]),
            (.arrivePipe(100, pipe: 7), ["hold(100)", "splice(p7,100)"]),
            (.arrivePipe(100, pipe: 9), ["hold(100)"]),
            (.acceptsSplice, ["false"]),
            (.written(100), ["give(p7)", "unhold(100)", "consume(100)", "splice(p9,100)"]),
            (.acceptsSplice, ["true"]),
            // The chunk being spliced stays until its write completes.
            (.refused, []),
            (.acceptsSplice, ["false"]),
            (.written(100), ["give(p9)", "unhold(100)", "consume(100)"]),
        ]),
        TunnelScenario(name: "a socket error while reading resets both ends; a second one changes nothing", steps: [
            (.attach, ["receive"]),
            (.failed, ["resetStream", "resetSocket", "close[]", "finished"]),
            (.failed, []),
            (.abort, []),
            (.lost, []),
        ]),
        TunnelScenario(name: "a pipe being spliced into when the tunnel ends is closed, not reused", splice: true, steps: [
            (.attach, ["pollReadable"]), (.readable, ["takePipe"]), (.pipe(3), ["spliceIn(p3)"]),
            (.lost, ["resetSocket", "close[]", "discard(p3)", "finished"]),
        ]),
    ]

    @Test("Scenario", arguments: scenarios)
    func scenario(_ scenario: TunnelScenario) {
        var state = TunnelState(splice: scenario.splice, bufferedReadsBelow: scenario.smallReads)
        for (index, (event, expected)) in scenario.steps.enumerated() {
            let actions = apply(event, &state)
            #expect(actions == expected, "step \(index + 1): \(event)")
        }
    }

    @Test("Every byte held is given back, whatever order the events come in")
    func heldBalances() {
        // Each scenario that ends finished (or drained) leaves the held count where it began.
        for scenario in Self.scenarios {
            var state = TunnelState(splice: scenario.splice, bufferedReadsBelow: scenario.smallReads)
            var held = 0
            for (event, _) in scenario.steps {
                for action in apply(event, &state) {
                    if action.hasPrefix("hold(") { held += Int(action.dropFirst(5).dropLast())! }
                    if action.hasPrefix("unhold(") { held -= Int(action.dropFirst(7).dropLast())! }
                }
            }
            #expect(held >= 0, "\(scenario.name): more given back than held")
            if state.isFinished && state.holdsNothingUp {
                #expect(held == 0, "\(scenario.name): \(held) bytes still held after the end")
            }
        }
    }
}

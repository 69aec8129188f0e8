import FuzzSupport
import HTTP2

// `FrameTracker.advance` fed a byte stream in pieces the input chooses, with `skip` standing in
// for payload bytes that were spliced: after every piece `headerMissing` and `dataRemaining`
// stay in range, and at the end the tracker agrees with one fed the whole stream at once and
// with a model that walks the frames.
//
// Input: [settings][count][count piece sizes][stream]. settings bit 0: a server (expects the
// client preface). A piece size byte: bit 7 clear, advance the next 0-127 bytes; bit 7 set, skip
// up to 1-128 bytes of an unpadded DATA payload (if one is being read, else advance that many).

struct State: Equatable, CustomStringConvertible {
    var remaining: Int, type: UInt8, flags: UInt8, stream: Int32, headerMissing: Int, dataRemaining: Int

    init(remaining: Int, type: UInt8, flags: UInt8, stream: Int32, headerMissing: Int) {
        self.remaining = remaining
        self.type = type
        self.flags = flags
        self.stream = stream
        self.headerMissing = headerMissing
        dataRemaining = type == 0 && flags & 0x8 == 0 ? remaining : 0
    }

    init(_ tracker: FrameTracker) {
        remaining = tracker.remaining
        type = tracker.type
        flags = tracker.flags
        stream = tracker.stream
        headerMissing = tracker.headerMissing
        dataRemaining = tracker.dataRemaining
    }

    var description: String {
        "remaining \(remaining) type \(type) flags \(flags) stream \(stream) headerMissing \(headerMissing) dataRemaining \(dataRemaining)"
    }
}

/// Walks `bytes` frame by frame: the state a tracker must be in after them.
func model(_ bytes: UnsafeRawBufferPointer, expectsPreface: Bool) -> State {
    var state = State(remaining: 0, type: 0, flags: 0, stream: 0, headerMissing: 9)
    if expectsPreface && bytes.count < 24 { return State(remaining: 0, type: 0, flags: 0, stream: 0, headerMissing: 0) }
    var index = expectsPreface ? 24 : 0
    while index < bytes.count {
        guard bytes.count - index >= 9 else {
            state.headerMissing = 9 - (bytes.count - index)
            return state
        }
        let length = Int(bytes[index]) << 16 | Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
        let stream = (0..<4).reduce(0) { $0 << 8 | Int(bytes[index + 5 + $1]) } & 0x7fff_ffff
        let payload = min(length, bytes.count - index - 9)
        state = State(remaining: length - payload, type: bytes[index + 3], flags: bytes[index + 4],
                      stream: Int32(stream), headerMissing: length - payload > 0 ? 0 : 9)
        index += 9 + payload
    }
    return state
}

func checkRange(_ tracker: FrameTracker, after consumed: Int) {
    let state = State(tracker)
    require((0...9).contains(state.headerMissing), "after \(consumed) bytes: \(state)")
    require((0...0xFF_FFFF).contains(state.remaining), "after \(consumed) bytes: \(state)")
    require(state.dataRemaining >= 0 && state.dataRemaining <= state.remaining, "after \(consumed) bytes: \(state)")
    require(state.remaining == 0 || state.headerMissing == 0, "after \(consumed) bytes: a payload and a header at once: \(state)")
    require(state.stream >= 0, "after \(consumed) bytes: \(state)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let expectsPreface = input.byte() & 1 == 1
    var pieces = Array(input.take(Int(input.byte() & 0x7f)))
    if pieces.allSatisfy({ $0 == 0 }) { pieces = [0x7f] }  // none that move: 127 bytes at a time
    let stream = input.rest()

    var tracker = FrameTracker(expectsPreface: expectsPreface)
    checkRange(tracker, after: 0)
    var offset = 0
    var round = 0
    while offset < stream.count {
        let piece = pieces[round % pieces.count]
        round += 1
        let wanted = Int(piece & 0x7f) + (piece & 0x80 == 0 ? 0 : 1)
        let count = min(wanted, stream.count - offset)
        if piece & 0x80 != 0 && tracker.dataRemaining > 0 {
            let skipped = min(count, tracker.dataRemaining)
            let before = State(tracker)
            tracker.skip(skipped)
            require(tracker.remaining == before.remaining - skipped && tracker.type == before.type,
                    "skip \(skipped) from \(before) gave \(State(tracker))")
            offset += skipped
        } else {
            tracker.advance(UnsafeRawBufferPointer(rebasing: stream[offset..<(offset + count)]))
            offset += count
        }
        checkRange(tracker, after: offset)
    }
    let consumed = UnsafeRawBufferPointer(rebasing: stream[..<offset])

    var whole = FrameTracker(expectsPreface: expectsPreface)
    whole.advance(consumed)
    checkRange(whole, after: offset)
    require(State(tracker) == State(whole), "in pieces \(pieces): \(State(tracker)); at once: \(State(whole))")
    let expected = model(consumed, expectsPreface: expectsPreface)
    require(State(whole) == expected, "after \(offset) bytes: \(State(whole)); the model says \(expected)")
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }

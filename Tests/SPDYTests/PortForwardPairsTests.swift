import XCTest
@testable import SPDY

final class PortForwardPairsTests: XCTestCase {
    private typealias Decision = PortForwardPairs.Decision
    private let second: UInt64 = 1_000_000_000

    private func headers(_ type: String?, port: String? = "80", request: String? = nil) -> HeaderBlock {
        var block = HeaderBlock()
        if let type { block.fields.append(.init(name: "streamtype", value: type)) }
        if let port { block.fields.append(.init(name: "port", value: port)) }
        if let request { block.fields.append(.init(name: "requestid", value: request)) }
        return block
    }

    func testPairingTable() {
        func pair(_ key: PortForwardPairs.Key, _ port: UInt16, _ error: UInt32, _ data: UInt32) -> Decision {
            .replyAndForward(.init(key: key, port: port, errorStream: error, dataStream: data))
        }
        let table: [(String, [(UInt32, HeaderBlock, Decision)])] = [
            ("by requestid", [
                (1, headers("error", request: "0"), .reply),
                (3, headers("data", request: "0"), pair(.requestID("0"), 80, 1, 3)),
            ]),
            ("by requestid, interleaved, data first", [
                (1, headers("error", request: "0"), .reply),
                (3, headers("error", request: "1"), .reply),
                (5, headers("data", request: "1"), pair(.requestID("1"), 80, 3, 5)),
                (7, headers("data", port: "8080", request: "0"), pair(.requestID("0"), 8080, 1, 7)),
            ]),
            ("without requestid: data id minus 2", [
                (1, headers("error"), .reply),
                (3, headers("data"), pair(.streamID(1), 80, 1, 3)),
                (5, headers("error"), .reply),
                (9, headers("data"), .reply),
                (7, headers("data"), pair(.streamID(5), 80, 5, 7)),
            ]),
            ("duplicate", [
                (1, headers("error", request: "0"), .reply),
                (3, headers("error", request: "0"), .reset(.protocolError, reason: "stream 3: a second error stream for requestID(\"0\")")),
                (5, headers("data", request: "0"), pair(.requestID("0"), 80, 1, 5)),
                (7, headers("data", request: "0"), .reset(.protocolError, reason: "stream 7: a second data stream for requestID(\"0\")")),
            ]),
            ("wrong port", [
                (1, headers("error", port: "0"), .reset(.protocolError, reason: "stream 1 has an invalid port \"0\"")),
                (3, headers("error", port: "65536"), .reset(.protocolError, reason: "stream 3 has an invalid port \"65536\"")),
                (5, headers("error", port: "http"), .reset(.protocolError, reason: "stream 5 has an invalid port \"http\"")),
                (7, headers("error", port: nil), .reset(.protocolError, reason: "stream 7 has an invalid port \"\"")),
                (9, headers("error", port: "65535"), .reply),
            ]),
            ("wrong type", [
                (1, headers("stdin"), .reset(.protocolError, reason: "stream 1 has an unknown streamtype \"stdin\"")),
                (3, headers(nil), .reset(.protocolError, reason: "stream 3 has no streamtype")),
            ]),
        ]
        for (name, steps) in table {
            var pairs = PortForwardPairs()
            for (stream, block, expected) in steps {
                XCTAssertEqual(pairs.opened(stream: stream, headers: block, now: 0), expected, "\(name): stream \(stream)")
            }
        }
    }

    func testTimeout() {
        var pairs = PortForwardPairs()
        XCTAssertNil(pairs.nextDeadline)
        XCTAssertEqual(pairs.opened(stream: 1, headers: headers("error", request: "0"), now: 5 * second), .reply)
        XCTAssertEqual(pairs.opened(stream: 3, headers: headers("data", request: "1"), now: 10 * second), .reply)
        XCTAssertEqual(pairs.opened(stream: 5, headers: headers("error", request: "2"), now: 10 * second), .reply)
        guard case .replyAndForward = pairs.opened(stream: 7, headers: headers("data", request: "2"), now: 11 * second) else {
            return XCTFail("request 2 pairs")
        }
        XCTAssertEqual(pairs.nextDeadline, 35 * second)
        XCTAssertEqual(pairs.expire(now: 34 * second), [])
        XCTAssertEqual(pairs.expire(now: 35 * second), [
            .init(key: .requestID("0"), errorStream: 1, dataStream: nil, message: "timed out waiting for streams"),
        ])
        XCTAssertEqual(pairs.expire(now: 41 * second), [
            .init(key: .requestID("1"), errorStream: nil, dataStream: 3, message: "timed out waiting for streams"),
        ])
        XCTAssertNil(pairs.nextDeadline, "a complete pair has no deadline")
        XCTAssertEqual(pairs.count, 1)
    }

    func testForwardEndAndStreamGone() {
        var pairs = PortForwardPairs()
        _ = pairs.opened(stream: 1, headers: headers("error", request: "0"), now: 0)
        guard case .replyAndForward(let pair) = pairs.opened(stream: 3, headers: headers("data", request: "0"), now: 0) else {
            return XCTFail()
        }
        XCTAssertEqual(PortForwardPairs.endSteps(for: pair), [.finish(stream: 1), .finish(stream: 3)])
        XCTAssertEqual(PortForwardPairs.endSteps(for: pair, failure: "connection refused"),
                       [.write(stream: 1, text: "connection refused"), .finish(stream: 1), .finish(stream: 3)])
        pairs.forwardEnded(pair)
        XCTAssertEqual(pairs.count, 0)
        // A requestid may come again once its forward ended.
        XCTAssertEqual(pairs.opened(stream: 5, headers: headers("error", request: "0"), now: 0), .reply)
        // A waiting stream reset by the peer leaves its key free.
        pairs.streamGone(5)
        XCTAssertEqual(pairs.count, 0)
        XCTAssertEqual(pairs.opened(stream: 7, headers: headers("error", request: "0"), now: 0), .reply)
    }
}

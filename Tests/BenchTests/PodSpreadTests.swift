import Bench
import PortForward
import Testing

@Suite("Bench: streams spread over several pods")
struct PodSpreadTests {
    private let server = try! ServerURL(parsing: "http://127.0.0.1:6443")

    @Test("One pod: every stream goes to it (the behaviour before several pods)")
    func onePod() {
        let target = RelayTarget(server: server, path: ForwardPath(namespace: "bench", pod: "target"), echoPort: 7)
        for slot in [0, 1, 2, 9_999, 10_000] {
            #expect(target.path(forSlot: slot).path == "/portForward/bench/target")
        }
        #expect(target.path == target.paths[0])
    }

    @Test("Several pods: round robin by the stream's slot, evenly")
    func roundRobin() {
        let pods = ["a", "b", "c"].map { ForwardPath(namespace: "default", pod: "pod-\($0)") }
        let target = RelayTarget(server: server, paths: pods, echoPort: 7)
        #expect((0..<6).map { target.path(forSlot: $0).pod } == ["pod-a", "pod-b", "pod-c", "pod-a", "pod-b", "pod-c"])
        var counts: [String: Int] = [:]
        for slot in 0..<10_000 { counts[target.path(forSlot: slot).pod, default: 0] += 1 }
        #expect(counts == ["pod-a": 3_334, "pod-b": 3_333, "pod-c": 3_333])
        // fanout's churn streams take slots after the held ones: they keep rotating.
        #expect(target.path(forSlot: 10_000).pod == "pod-b")
    }

    @Test("--pod: repeated, comma lists, and the node path")
    func parsing() {
        let paths = RelayTarget.pods(parsing: ["default/pod-a,default/pod-b", "other/pod-c"])
        #expect(paths?.map(\.path) == ["/portForward/default/pod-a", "/portForward/default/pod-b", "/portForward/other/pod-c"])
        #expect(RelayTarget.pods(parsing: ["default/web"], node: "node-a")?.map(\.path)
                == ["/proxy/nodes/node-a/portForward/default/web"])
        #expect(RelayTarget.pods(parsing: [" default/a , default/b "])?.count == 2)
    }

    @Test("--pod: anything but NAMESPACE/NAME is refused", arguments: [[], ["web"], ["default/"], ["a/b/c"], ["default/a,"], ["default/a,,default/b"]])
    func refused(_ values: [String]) {
        #expect(RelayTarget.pods(parsing: values) == nil)
    }
}

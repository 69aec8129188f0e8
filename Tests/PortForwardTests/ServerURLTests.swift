import Testing
@testable import PortForward

@Suite("Server URLs")
struct ServerURLTests {
    @Test("Scheme, host and port as before; no path is an empty prefix", arguments: [
        ("http://127.0.0.1:10250", "127.0.0.1", 10250, false),
        ("https://relay.example", "relay.example", 443, true),
        ("http://relay.example/", "relay.example", 80, false),
        ("https://[::1]:6443", "::1", 6443, true),
        ("127.0.0.1:8080", "127.0.0.1", 8080, false),
    ])
    func noPath(_ text: String, _ host: String, _ port: Int, _ secure: Bool) throws {
        let url = try ServerURL(parsing: text)
        #expect(url.host == host && url.port == port && url.secure == secure)
        #expect(url.path == "")
        #expect(url.target("/api/v1/namespaces/default/pods/web") == "/api/v1/namespaces/default/pods/web")
    }

    @Test("The path is kept, as client-go joins it with the API path: cleaned, no trailing slash", arguments: [
        ("https://rancher.example/k8s/clusters/c-abc", "/k8s/clusters/c-abc"),
        ("https://rancher.example/k8s/clusters/c-abc/", "/k8s/clusters/c-abc"),
        ("http://127.0.0.1:8080//k8s///clusters/./c-abc//", "/k8s/clusters/c-abc"),
        ("http://127.0.0.1:8080/k8s/x/../clusters/c-abc", "/k8s/clusters/c-abc"),
        ("http://127.0.0.1:8080/../k8s", "/k8s"),
        ("https://[::1]:6443/proxy", "/proxy"),
        ("https://[::1]/proxy", "/proxy"),
        ("http://127.0.0.1:8080/a b/%41", "/a%20b/%41"),
        ("http://127.0.0.1:8080/é", "/%C3%A9"),
    ])
    func keepsPath(_ text: String, _ path: String) throws {
        let url = try ServerURL(parsing: text)
        #expect(url.path == path)
        #expect(url.target("/portForward/default/web") == path + "/portForward/default/web")
    }

    @Test("A query or fragment is ignored, as client-go ignores them", arguments: [
        "https://rancher.example:8443/k8s/clusters/c-abc?token=x",
        "https://rancher.example:8443/k8s/clusters/c-abc#frag",
        "https://rancher.example:8443/k8s/clusters/c-abc/?a=/b#c",
    ])
    func queryAndFragment(_ text: String) throws {
        let url = try ServerURL(parsing: text)
        #expect(url.host == "rancher.example" && url.port == 8443)
        #expect(url.path == "/k8s/clusters/c-abc")
    }

    @Test("A query on a URL without a path leaves host and port alone")
    func queryWithoutPath() throws {
        let url = try ServerURL(parsing: "http://127.0.0.1:8080?x=1")
        #expect(url.host == "127.0.0.1" && url.port == 8080 && url.path == "")
    }

    @Test("Refused with one line: a bare HOST:PORT with a path (as client-go), no host, a bad port", arguments: [
        ("127.0.0.1:8080/k8s/clusters/c-abc", "a path needs http:// or https://"),
        ("http:///k8s", "invalid server URL"),
        ("http://127.0.0.1:99999/k8s", "bad port"),
        ("http://127.0.0.1:x/k8s", "bad port"),
    ])
    func refused(_ text: String, _ expected: String) {
        #expect {
            _ = try ServerURL(parsing: text)
        } throws: { error in
            "\(error)".contains(expected) && !"\(error)".contains("\n")
        }
    }
}

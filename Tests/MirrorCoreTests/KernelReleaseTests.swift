import MirrorCore
import Testing

@Suite("Kernel release")
struct KernelReleaseTests {
    @Test("versions read from uname -r strings")
    func versions() {
        #expect(KernelRelease.version("6.18.44-fc-v1300")! == (6, 18, 44))
        #expect(KernelRelease.version("6.4.5-arch1-1")! == (6, 4, 5))
        #expect(KernelRelease.version("6.5.0-rc3")! == (6, 5, 0))
        #expect(KernelRelease.version("6.1")! == (6, 1, 0))
        #expect(KernelRelease.version("5.15.0-91-generic")! == (5, 15, 0))
        #expect(KernelRelease.version("linux") == nil)
        #expect(KernelRelease.version("6") == nil)
    }

    @Test("packet-socket UDP GSO becomes IP fragments on 6.2 to 6.4.5 only")
    func fragmentingKernels() {
        for r in ["6.2.0-39-generic", "6.2.16", "6.3.13", "6.4.0", "6.4.5-arch1-1"] {
            #expect(KernelRelease.fragmentsPacketSocketGSO(r), "\(r)")
        }
        for r in ["6.1.0-28-amd64", "5.15.0-91-generic", "6.4.6", "6.5.0", "6.6.63", "6.18.44-fc-v1300", "7.0.0", "odd"] {
            #expect(!KernelRelease.fragmentsPacketSocketGSO(r), "\(r)")
        }
    }
}

import Testing
import TetherAuth
@Test func placeholder() {}

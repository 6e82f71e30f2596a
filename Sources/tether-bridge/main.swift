print("tether-bridge: not yet")

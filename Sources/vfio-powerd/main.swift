print("vfio-powerd: not yet")

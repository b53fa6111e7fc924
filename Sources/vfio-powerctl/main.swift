print("vfio-powerctl: not yet")

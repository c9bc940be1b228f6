print("sura")

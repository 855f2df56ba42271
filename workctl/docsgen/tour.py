def write(readme, out): raise NotImplementedError

// mamba-r1: the command line (placeholder until the commands land).
int main() { return 0; }

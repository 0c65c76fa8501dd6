"""`python -m service.grpc.proto.build`: compile every .proto here into its Python modules (even
when they look up to date), printing the files written."""

from service.grpc.proto._compile import generate


def main() -> None:
    for path in generate():
        print(path)


if __name__ == "__main__":
    main()
